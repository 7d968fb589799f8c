"""The completion marker: written into the output directory after the draft is exported. A run that
finds it does not train again (a restarted pod of a finished job only reports Completed)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

MARKER_NAME = "dspark_complete.json"


def marker_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / MARKER_NAME


def read_marker(output_dir: str | Path) -> dict[str, Any] | None:
    """The marker's content when the run already completed, else None."""
    path = marker_path(output_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(output_dir: str | Path, info: dict[str, Any]) -> Path:
    """Atomically write the marker (temp file + rename)."""
    path = marker_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**info, "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    os.replace(tmp, path)
    return path
