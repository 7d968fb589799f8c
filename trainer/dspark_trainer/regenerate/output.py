"""The output directory, its atomic shard commits, and the resume state.

Layout (``*.jsonl`` at the top holds only regenerated samples, so the directory can be the trainer's dataset)::

    out/manifest.json              the run's plan fingerprint (inputs, shard size, sampling, model, endpoints)
    out/part-00000.jsonl           regenerated samples of shard 0, in input order
    out/rejects/part-00000.jsonl   shard 0's samples that failed permanently, with the reason (only if any)
    out/_state/part-00000.json     shard 0's commit record (counts, the data file's size and SHA-256)
    out/summary.json               counts of the last run and of the whole output

A shard is committed in this order: rejects file, data file, then its commit record, each written to a temporary
file in the same directory, fsynced, and renamed over the final name. A shard counts as written only when its
commit record exists and the data file matches it; anything else is redone (and overwritten) by a rerun, so a
killed run leaves no partial shard behind and no sample is ever written twice."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1


class OutputMismatchError(RuntimeError):
    """The output directory was written from other inputs or settings, or another run is writing it."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename (crash safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@dataclass(frozen=True)
class ShardResult:
    """What a worker produced for one shard: jsonl text of the written and the rejected samples, and counts."""

    shard: int
    data: str
    rejects: str
    written: int
    rejected: int
    retried: int
    requests: int
    samples: int


class OutputDir:
    """Paths and commits of one output directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    def data_path(self, shard: int) -> Path:
        return self.root / f"part-{shard:05d}.jsonl"

    def rejects_path(self, shard: int) -> Path:
        return self.root / "rejects" / f"part-{shard:05d}.jsonl"

    def state_path(self, shard: int) -> Path:
        return self.root / "_state" / f"part-{shard:05d}.json"

    def lock(self) -> None:
        """Take the directory's run lock (released when the process ends, even when killed), then remove temporary
        files a killed run left behind. Two runs never write one output directory at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputMismatchError(f"another run is writing {self.root} (it holds {self.root / '.lock'})") from None
        self._lock_fd = fd
        for folder in (self.root, self.root / "rejects", self.root / "_state"):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest on the first run; on a rerun, refuse other inputs, shard size or sampling."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            atomic_write_json(self.manifest_path, {"version": MANIFEST_VERSION, **manifest})
            return
        old = json.loads(self.manifest_path.read_text())
        for key in ("plan", "sampling"):
            if old.get(key) != manifest.get(key):
                raise OutputMismatchError(
                    f"{self.root} holds a run with a different {key} (see {self.manifest_path}); "
                    "use a new --output directory (or delete the old one) to start over"
                )

    def committed(self, shard: int) -> dict[str, Any] | None:
        """The commit record of a written shard, or None when the shard must be (re)done."""
        try:
            state: dict[str, Any] = json.loads(self.state_path(shard).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        data = self.data_path(shard)
        if not data.exists() or data.stat().st_size != state.get("data_bytes"):
            return None
        if state.get("rejected", 0) and not self.rejects_path(shard).exists():
            return None
        return state

    def commit(self, result: ShardResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write one shard (rejects, data, then the commit record)."""
        self.state_path(result.shard).unlink(missing_ok=True)
        rejects = self.rejects_path(result.shard)
        if result.rejected:
            atomic_write_bytes(rejects, result.rejects.encode())
        else:
            rejects.unlink(missing_ok=True)
        body = result.data.encode()
        atomic_write_bytes(self.data_path(result.shard), body)
        state = {
            "shard": result.shard, "samples": result.samples, "written": result.written,
            "rejected": result.rejected, "retried": result.retried, "requests": result.requests,
            "data_file": self.data_path(result.shard).name, "data_bytes": len(body),
            "data_sha256": hashlib.sha256(body).hexdigest(), **(extra or {}),
        }
        atomic_write_json(self.state_path(result.shard), state)
        return state
