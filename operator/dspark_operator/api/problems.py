"""What is wrong with a spec: the field the user wrote and what to do about it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class InvalidSpec:
    """A spec problem: the field path (e.g. spec.trainer.nodes) and what is wrong with it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"
