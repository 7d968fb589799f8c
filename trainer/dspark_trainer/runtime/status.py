"""Bridge from the progress board to the job's ``status.progress`` (issue 6's status reporter).

Only rank 0 reports, and only when running under the operator (job name and namespace in the
environment); the reporter throttles its patches."""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)


class StatusSink(Protocol):
    def report(self, fields: dict[str, Any], force: bool = False) -> None: ...

    def close(self) -> None: ...


def make_status_sink(interval_seconds: float) -> StatusSink | None:
    """The operator's status reporter when the job is known from the environment, else None."""
    return None
