"""Fixtures of the trainer tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import make_char_tokenizer


@pytest.fixture(scope="session")
def char_tokenizer() -> Any:
    return make_char_tokenizer()


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Any:
    """Write records to a jsonl file under tmp_path and return its path."""
    import json

    def write(records: list[dict[str, Any]], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    return write
