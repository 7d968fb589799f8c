"""Per-rank log of the sample ids of every optimizer step (``runtime.sampleLogDir``): one jsonl file per
rank, one line ``{"step": s, "uids": [...]}`` per step. On resume the lines of steps after the
checkpoint are dropped, so the log always describes exactly the updates in the model's history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO


class SampleLog:
    def __init__(self, directory: str | Path, rank: int) -> None:
        self.path = Path(directory) / f"rank-{rank:05d}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO | None = None

    def truncate_after(self, step: int) -> None:
        """Keep only the lines of steps <= ``step`` (0 keeps nothing)."""
        kept: list[str] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def write(self, step: int, uids: list[str]) -> None:
        if self._fh is None:
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps({"step": step, "uids": uids}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_sample_log(path: str | Path) -> list[tuple[int, list[str]]]:
    """(step, uids) in file order."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.append((int(rec["step"]), list(rec["uids"])))
    return out
