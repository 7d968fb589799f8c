"""Bridge from the progress board to the job's ``status.progress`` (``dspark_trainer.status_reporter``).

Only rank 0 reports, and only when running under the operator (the job config names the job in
``job:``); the reporter throttles its patches to ``metrics.statusIntervalSeconds`` and sends state
changes at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from dspark_trainer.config.job import JobIdentity


class StatusSink(Protocol):
    """The part of ``StatusReporter`` the runtime uses."""

    def report(self, fields: Mapping[str, Any] | None = None, force: bool = False, **more: Any) -> bool: ...

    def checkpoint_request(self, max_age: float = 30.0) -> str | None: ...

    def checkpointed(self, path: str, step: int | None = None, request_id: str | None = None) -> bool: ...

    def completed(self, draft_path: str, *, retry_seconds: float = 120.0, **fields: Any) -> bool: ...

    def failed(self, message: str, **fields: Any) -> bool: ...

    def close(self) -> None: ...


def make_status_sink(job: JobIdentity | None, interval_seconds: float) -> StatusSink | None:
    """The operator's status reporter when the config names a job (rank 0), else None."""
    from dspark_trainer.status_reporter import StatusReporter

    return StatusReporter.for_job(job, min_interval=interval_seconds)
