"""Files shipped with the package: the bundled demo dataset and the local demo config."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
DEMO_DATASET = ASSETS_DIR / "demo_conversations.jsonl"
LOCAL_DEMO_CONFIG = ASSETS_DIR / "local_demo.yaml"

# `builtin:<name>` values accepted by dataset.path (and by `dspark train --local` for the target).
BUILTIN_DATASETS: dict[str, Path] = {"demo-conversations": DEMO_DATASET}
BUILTIN_PREFIX = "builtin:"
