"""Trainer-side reporter of training progress into the job's ``status.progress`` (torch-free).

The operator renders the job's name and namespace into the job config (``job:``) and runs the trainer
pods with a service account whose Role allows exactly: get this job, get/patch this job's ``status``. Rank 0
creates one reporter and feeds it; patches are throttled (``min_interval`` seconds, default 10),
except state changes (Checkpointed, Completed, Failed) which are sent at once.

    reporter = StatusReporter.for_job(config.job)  # None when not under the operator or not rank 0
    if reporter:
        reporter.report({"step": 10, "total": 1000, "loss": 2.3, "tau": 3.1, "accept_rate": [0.9, 0.7]})
        if reporter.checkpoint_request():          # the operator wants a checkpoint (suspend)
            path = save_checkpoint()
            reporter.checkpointed(path, step=10)   # acknowledges the request
        reporter.completed(draft_path="/output/draft", step=1000)
        reporter.close()

Fields are those of ``dspark_trainer.config.progress.Progress``, made schema-safe by its ``progress_patch``
(snake_case or camelCase keys; unknown keys dropped; NaN/inf become null). Reporting never raises: a failed
patch is logged and retried with the next report (``completed`` retries for a while).

The suspend handshake: the operator sets ``status.checkpointRequest.id``; the trainer checkpoints
and reports ``state: Checkpointed`` with ``checkpointAck: <id>`` (``checkpointed()`` does both); the
operator then scales the job to zero (SIGTERM also asks the trainer to checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from dspark_trainer.config.job import JobIdentity
from dspark_trainer.config.progress import URGENT_STATES, TrainerState, progress_patch

log = logging.getLogger(__name__)


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class StatusReporter:
    """Patches ``status.progress`` of one DSparkTrainingJob, throttled. Thread-safe; never raises."""

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        min_interval: float = 10.0,
        api_client: Any = None,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.min_interval = min_interval
        self.request_timeout = request_timeout
        self._clock = clock
        self._client = api_client
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._last_sent: float | None = None
        self._last_state: str | None = None
        self._request_id: str | None = None
        self._request_seen: float | None = None
        self._failures = 0
        self.sent = 0  # patches sent successfully

    @property
    def path(self) -> str:
        """REST path of the job's status subresource."""
        return JobIdentity(name=self.name, namespace=self.namespace).path + "/status"

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_job(
        cls,
        job: JobIdentity | None,
        *,
        min_interval: float = 10.0,
        api_client: Any = None,
        only_rank0: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> StatusReporter | None:
        """A reporter for the job the config was rendered for; None when not running under the operator
        (no ``job`` section) or, with only_rank0, when this is not rank 0 ($RANK)."""
        if job is None:
            return None
        env = os.environ if env is None else env
        if only_rank0 and env.get("RANK", "0").strip() not in ("", "0"):
            return None
        return cls(job.name, job.namespace, min_interval=min_interval, api_client=api_client)

    def _api(self) -> Any:
        if self._client is None:
            from kubernetes import client as k8s_client
            from kubernetes import config as k8s_config

            cfg = k8s_client.Configuration()
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
                k8s_config.load_incluster_config(client_configuration=cfg)
            else:
                k8s_config.load_kube_config(client_configuration=cfg)
            self._client = k8s_client.ApiClient(cfg)
        return self._client

    # ------------------------------------------------------------------ public API
    def report(self, fields: Mapping[str, Any] | None = None, force: bool = False, **more: Any) -> bool:
        """Merge these progress fields into the pending report and send it when the interval has passed
        (or force, or the state changed to Checkpointed/Completed/Failed). True when a patch was sent."""
        data = progress_patch({**(fields or {}), **more})
        with self._lock:
            self._pending.update(data)
            state = data.get("state")
            urgent = state is not None and state != self._last_state and state in URGENT_STATES
            now = self._clock()
            due = self._last_sent is None or now - self._last_sent >= self.min_interval
            if not (force or urgent or due):
                return False
            return self._send_locked()

    def flush(self) -> bool:
        """Send whatever is pending now."""
        with self._lock:
            return self._send_locked() if self._pending else True

    def checkpoint_request(self, max_age: float = 30.0) -> str | None:
        """Id of the operator's pending checkpoint request (e.g. before a suspend), or None.

        Known from the last patch response; refreshed with a GET when older than max_age seconds."""
        with self._lock:
            stale = self._request_seen is None or self._clock() - self._request_seen > max_age
            if stale:
                try:
                    obj = self._call("GET", None)
                except Exception as exc:
                    self._log_failure("read the job", exc)
                else:
                    self._remember_request(obj)
            return self._request_id

    def checkpointed(self, path: str, step: int | None = None, request_id: str | None = None) -> bool:
        """Report a complete checkpoint; acknowledges the operator's request (given or pending)."""
        ack = request_id or self._request_id
        fields: dict[str, Any] = {"state": TrainerState.CHECKPOINTED, "last_checkpoint": path}
        if step is not None:
            fields["last_checkpoint_step"] = step
        if ack:
            fields["checkpoint_ack"] = ack
        return self.report(fields, force=True)

    def completed(self, draft_path: str, *, retry_seconds: float = 120.0, **fields: Any) -> bool:
        """Report completion (the operator then marks the job Succeeded and scales it down). Retries."""
        deadline = self._clock() + retry_seconds
        delay = 1.0
        while True:
            if self.report({**fields, "state": TrainerState.COMPLETED, "draft_path": draft_path}, force=True):
                return True
            if self._clock() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

    def failed(self, message: str, **fields: Any) -> bool:
        """Report a failure a restart cannot fix (the operator marks the job Failed, no gang restart)."""
        return self.report({**fields, "state": TrainerState.FAILED, "message": message}, force=True)

    def close(self) -> None:
        """Send what is pending."""
        self.flush()

    # ------------------------------------------------------------------ internals
    def _send_locked(self) -> bool:
        body = dict(self._pending)
        body["updatedTime"] = _rfc3339(time.time())
        try:
            obj = self._call("PATCH", {"status": {"progress": body}})
        except Exception as exc:
            self._log_failure("patch status.progress", exc)
            return False
        self._failures = 0
        self.sent += 1
        self._last_sent = self._clock()
        if body.get("state") is not None:
            self._last_state = body["state"]
        self._pending.clear()
        self._remember_request(obj)
        return True

    def _remember_request(self, obj: Any) -> None:
        if not isinstance(obj, Mapping):
            return
        req = (obj.get("status") or {}).get("checkpointRequest") or {}
        self._request_id = req.get("id") if isinstance(req, Mapping) else None
        self._request_seen = self._clock()

    def _log_failure(self, what: str, exc: Exception) -> None:
        self._failures += 1
        if self._failures <= 3 or self._failures % 30 == 0:
            log.warning("status reporter: could not %s of %s/%s: %s", what, self.namespace, self.name, exc)

    def _call(self, method: str, body: Any) -> Any:
        client = self._api()
        path = self.path if method == "PATCH" else self.path.removesuffix("/status")
        headers = {"Accept": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        serialized = client.param_serialize(
            method=method,
            resource_path=path,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = client.call_api(*serialized, _request_timeout=self.request_timeout)
        raw = response.read()
        if not 200 <= response.status <= 299:
            text = raw.decode("utf-8", "replace")[:500] if raw else ""
            raise RuntimeError(f"HTTP {response.status}: {text}")
        return json.loads(raw) if raw else None
