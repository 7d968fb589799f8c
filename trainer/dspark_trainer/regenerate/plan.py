"""The shard plan: samples are numbered in input order (files sorted, then lines; blank lines skipped) and
sample ``i`` belongs to output shard ``i // shard_size``. The plan depends only on the input bytes and the
shard size, so a rerun reproduces the same shard boundaries and can skip the shards already written.

The driver scans the input once (offsets, sample counts and a SHA-256 per file) and hands each shard to a worker
as byte ranges (``Segment``); the worker reads only its own lines. A shard may span several input files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dspark_trainer.data.records import resolve_dataset_paths


@dataclass(frozen=True)
class Segment:
    """Consecutive lines of one input file: bytes ``[start, end)``; the first line there is ``first_line`` (1-based)."""

    path: str
    start: int
    end: int
    first_line: int


@dataclass(frozen=True)
class ShardSpec:
    """Output shard ``shard``: samples ``first_index .. first_index + count - 1`` of the input order."""

    shard: int
    first_index: int
    count: int
    segments: tuple[Segment, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> ShardSpec:
        obj = json.loads(text)
        segments = tuple(Segment(**s) for s in obj.pop("segments"))
        return ShardSpec(segments=segments, **obj)


@dataclass(frozen=True)
class InputFile:
    """One input file as scanned: its fingerprint and how many samples it holds."""

    path: str
    size: int
    sha256: str
    samples: int


@dataclass(frozen=True)
class Plan:
    inputs: tuple[InputFile, ...]
    shard_size: int
    shards: tuple[ShardSpec, ...]

    @property
    def num_samples(self) -> int:
        return sum(f.samples for f in self.inputs)

    def fingerprint(self) -> dict[str, Any]:
        """What must match between runs writing into the same output."""
        return {"shard_size": self.shard_size, "inputs": [asdict(f) for f in self.inputs]}


@dataclass(frozen=True)
class InputLine:
    """One sample's raw line with its place in the input."""

    index: int
    path: str
    line: int
    text: str
    error: str | None = None

    @property
    def default_uid(self) -> str:
        """The id a record without an ``id`` gets (the trainer's convention: ``<file name>:<line>``)."""
        return f"{Path(self.path).name}:{self.line}"

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"


def make_plan(input_spec: str, shard_size: int) -> Plan:
    """Scan the input (a file, a directory of ``*.jsonl``, or a glob) and cut it into shards."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    paths = resolve_dataset_paths(input_spec, field="--input")
    inputs: list[InputFile] = []
    shards: list[ShardSpec] = []
    index = 0
    open_segments: list[Segment] = []
    shard_first = 0

    def close_shard() -> None:
        nonlocal open_segments, shard_first
        if index > shard_first:
            shards.append(ShardSpec(len(shards), shard_first, index - shard_first, tuple(open_segments)))
        open_segments, shard_first = [], index

    for path in paths:
        resolved = str(path.resolve())
        digest = hashlib.sha256()
        pos = 0
        seg_start: int | None = None
        seg_line = 0
        file_samples = 0
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                digest.update(raw)
                if raw.strip():
                    if index - shard_first == shard_size:
                        if seg_start is not None:
                            open_segments.append(Segment(resolved, seg_start, pos, seg_line))
                            seg_start = None
                        close_shard()
                    if seg_start is None:
                        seg_start, seg_line = pos, lineno
                    index += 1
                    file_samples += 1
                pos += len(raw)
        if seg_start is not None:
            open_segments.append(Segment(resolved, seg_start, pos, seg_line))
        inputs.append(InputFile(resolved, pos, digest.hexdigest(), file_samples))
    close_shard()
    return Plan(tuple(inputs), shard_size, tuple(shards))


def read_shard(spec: ShardSpec) -> Iterator[InputLine]:
    """The shard's samples in input order (blank lines skipped, line numbers as in the file)."""
    index = spec.first_index
    for seg in spec.segments:
        with open(seg.path, "rb") as fh:
            fh.seek(seg.start)
            data = fh.read(seg.end - seg.start)
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        for offset, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                yield InputLine(index, seg.path, seg.first_line + offset, raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield InputLine(index, seg.path, seg.first_line + offset, "", error=f"not valid UTF-8: {exc}")
            index += 1
    if index != spec.first_index + spec.count:
        raise RuntimeError(
            f"shard {spec.shard}: expected {spec.count} samples, read {index - spec.first_index}; did the input change?"
        )
