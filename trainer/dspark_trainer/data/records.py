"""Read OpenAI-style ``messages`` jsonl conversations. Every record gets a stable id: its ``id``
field when present, else ``<file name>:<line number>`` (1-based, blank lines counted)."""

from __future__ import annotations

import glob
import json
import threading
from abc import abstractmethod
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, overload

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


def messages_problem(messages: object) -> str | None:
    """Why ``messages`` is not a non-empty list of OpenAI-style messages (a known role each, string or list
    content), or None."""
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            return f"messages[{i}] needs a `role` in {sorted(ROLES)}"
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            return f"messages[{i}].content must be a string or a list of parts"
    return None


def record_id(obj: dict[str, Any], default_uid: str) -> str:
    """A record's stable id: its ``id`` field when present and not empty, else ``default_uid``."""
    raw_id = obj.get("id")
    return default_uid if raw_id is None or raw_id == "" else str(raw_id)


def parse_record(line: str, default_uid: str, where: str) -> ConversationRecord:
    """Parse one jsonl line (``{"id"?: ..., "messages": [...]}``)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or "messages" not in obj:
        raise DatasetError(f"{where}: a record must be an object with a `messages` list")
    problem = messages_problem(obj["messages"])
    if problem:
        raise DatasetError(f"{where}: {problem}")
    return ConversationRecord(uid=record_id(obj, default_uid), messages=obj["messages"])


class RecordSequence(Sequence[ConversationRecord]):
    """A sequence of records read one at a time (``record``); a slice is a list of them."""

    @abstractmethod
    def record(self, index: int) -> ConversationRecord:
        """The record at ``index`` (0 <= index < len(self))."""

    @overload
    def __getitem__(self, index: int) -> ConversationRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[ConversationRecord]: ...

    def __getitem__(self, index: int | slice) -> ConversationRecord | list[ConversationRecord]:
        if isinstance(index, slice):
            return [self.record(i) for i in range(*index.indices(len(self)))]
        return self.record(index)


class RecordStore(RecordSequence):
    """The records of jsonl files, indexed once and read on demand.

    Indexing parses every line once (validating it and taking its id) but keeps only the id and the
    line's byte offset, so a rank holds a few dozen bytes per record instead of the conversation;
    ``store[i]`` seeks to the line and parses it again.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self._file_of = array("i")
        self._offset_of = array("q")
        self._line_of = array("i")
        self.uids: list[str] = []
        self._handles: dict[int, BinaryIO] = {}
        self._lock = threading.Lock()
        seen: dict[str, int] = {}
        for file_idx, path in enumerate(self.paths):
            with path.open("rb") as fh:
                offset = 0
                for lineno, raw in enumerate(fh, start=1):
                    line = raw.decode("utf-8")
                    if line.strip():
                        where = f"{path}:{lineno}"
                        rec = parse_record(line, default_uid=f"{path.name}:{lineno}", where=where)
                        if rec.uid in seen:
                            first = seen[rec.uid]
                            raise DatasetError(
                                f"{where}: duplicate record id {rec.uid!r} (first at "
                                f"{self.paths[self._file_of[first]]}:{self._line_of[first]})"
                            )
                        seen[rec.uid] = len(self.uids)
                        self._file_of.append(file_idx)
                        self._offset_of.append(offset)
                        self._line_of.append(lineno)
                        self.uids.append(rec.uid)
                    offset += len(raw)

    def __len__(self) -> int:
        return len(self.uids)

    def record(self, index: int) -> ConversationRecord:
        if index < 0:
            index += len(self)
        file_idx = self._file_of[index]
        with self._lock:
            fh = self._handles.get(file_idx)
            if fh is None:
                fh = self._handles[file_idx] = self.paths[file_idx].open("rb")
            fh.seek(self._offset_of[index])
            line = fh.readline().decode("utf-8")
        where = f"{self.paths[file_idx]}:{self._line_of[index]}"
        rec = parse_record(line, default_uid=self.uids[index], where=where)
        return ConversationRecord(uid=self.uids[index], messages=rec.messages)

    def close(self) -> None:
        with self._lock:
            for fh in self._handles.values():
                fh.close()
            self._handles.clear()


class RecordSubset(RecordSequence):
    """Some records of a sequence, by position (the train or eval split)."""

    def __init__(self, base: Sequence[ConversationRecord], positions: Sequence[int]) -> None:
        self.base = base
        self.positions = list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def record(self, index: int) -> ConversationRecord:
        return self.base[self.positions[index]]


def record_uid(records: Sequence[ConversationRecord], index: int) -> str:
    """A record's id without reading the record when the sequence is a store."""
    if isinstance(records, RecordStore):
        return records.uids[index]
    if isinstance(records, RecordSubset):
        return record_uid(records.base, records.positions[index])
    return records[index].uid


def read_records(paths: list[Path]) -> list[ConversationRecord]:
    """All records of the files, in memory (file order, then line order); duplicate ids are an error."""
    store = RecordStore(paths)
    try:
        return list(store)
    finally:
        store.close()


def load_dataset(path: str, field: str = "dataset.path") -> RecordStore:
    """Resolve and index a dataset; an empty one is an error naming ``field``."""
    store = RecordStore(resolve_dataset_paths(path, field))
    if not len(store):
        raise DatasetError(f"{field}: {path} holds no conversations")
    return store
