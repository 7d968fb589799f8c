"""Read OpenAI-style ``messages`` jsonl conversations. Every record gets a stable id: its ``id``
field when present, else ``<file name>:<line number>`` (1-based, blank lines counted)."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark_trainer.assets import BUILTIN_DATASETS, BUILTIN_PREFIX

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


class DatasetError(ValueError):
    """A dataset problem found at start; the message names the field or the file and line."""


@dataclass(frozen=True)
class ConversationRecord:
    """One conversation with its stable id."""

    uid: str
    messages: list[dict[str, Any]]


def resolve_dataset_paths(path: str, field: str = "dataset.path") -> list[Path]:
    """A jsonl file, a directory of ``*.jsonl`` (sorted), a glob, or ``builtin:<name>``."""
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_DATASETS:
            raise DatasetError(f"{field}: unknown builtin dataset {name!r}; known: {sorted(BUILTIN_DATASETS)}")
        return [BUILTIN_DATASETS[name]]
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise DatasetError(f"{field}: directory {path} holds no *.jsonl files")
        return files
    if any(ch in path for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file())
        if not files:
            raise DatasetError(f"{field}: no file matches {path}")
        return files
    raise DatasetError(f"{field}: {path} does not exist")


def _check_messages(messages: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: `messages` must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise DatasetError(f"{where}: messages[{i}] needs a `role` in {sorted(ROLES)}")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise DatasetError(f"{where}: messages[{i}].content must be a string")
    return messages


def parse_record(line: str, default_uid: str, where: str) -> ConversationRecord:
    """Parse one jsonl line (``{"id"?: ..., "messages": [...]}``)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or "messages" not in obj:
        raise DatasetError(f"{where}: a record must be an object with a `messages` list")
    raw_id = obj.get("id")
    uid = default_uid if raw_id is None or raw_id == "" else str(raw_id)
    return ConversationRecord(uid=uid, messages=_check_messages(obj["messages"], where))


def read_records(paths: list[Path]) -> list[ConversationRecord]:
    """All records of the files, in file order then line order; duplicate ids are an error."""
    records: list[ConversationRecord] = []
    seen: dict[str, str] = {}
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                rec = parse_record(line, default_uid=f"{path.name}:{lineno}", where=where)
                if rec.uid in seen:
                    raise DatasetError(f"{where}: duplicate record id {rec.uid!r} (first at {seen[rec.uid]})")
                seen[rec.uid] = where
                records.append(rec)
    return records


def load_dataset(path: str, field: str = "dataset.path") -> list[ConversationRecord]:
    """Resolve and read a dataset; an empty one is an error naming ``field``."""
    records = read_records(resolve_dataset_paths(path, field))
    if not records:
        raise DatasetError(f"{field}: {path} holds no conversations")
    return records
