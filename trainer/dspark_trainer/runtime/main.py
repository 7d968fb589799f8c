"""`dspark train --config FILE`: what every torchrun worker runs."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
from typing import Any

from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError
from dspark_trainer.runtime.completion import read_marker
from dspark_trainer.runtime.draft_api import DraftAPI
from dspark_trainer.runtime.http_server import MetricsServer
from dspark_trainer.runtime.metrics import TrainerMetrics
from dspark_trainer.runtime.progress import ProgressBoard
from dspark_trainer.runtime.signals import StopRequest
from dspark_trainer.runtime.sources import HiddenStateSource
from dspark_trainer.runtime.status import StatusSink, make_status_sink

log = logging.getLogger("dspark.trainer")

EXIT_ENV = "DSPARK_EXIT_ON_COMPLETE"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def load_draft_api() -> DraftAPI:
    from dspark_trainer.runtime.draft_dspark import DSparkDraftAPI

    return DSparkDraftAPI()


def make_source(config: JobConfig, target_dir: str, layer_ids: list[int], device: Any, rank: int) -> HiddenStateSource:
    import torch

    need_last = config.draft.l1_alpha > 0 or config.draft.confidence_alpha > 0
    if config.capture.mode == "inline":
        from dspark_trainer.runtime.sources import InlineSource

        dtype = getattr(torch, config.target.dtype)
        return InlineSource(target_dir, layer_ids, dtype, device, need_last)
    from dspark_trainer.runtime.remote_source import RemoteSource

    return RemoteSource(config, layer_ids, need_last, rank, torch.device(device))


def wait_until_stopped(stop: StopRequest) -> None:
    """Stay alive (a StatefulSet restarts exited pods) until SIGTERM/SIGINT."""
    log.info("training is complete; staying alive until SIGTERM (set %s=1 to exit instead)", EXIT_ENV)
    while not stop.wait(timeout=3600):
        pass


def publish(config: JobConfig, board: ProgressBoard) -> None:
    """Copy the export to ``export.destination`` (if any); an error propagates (the run is not complete yet)."""
    if config.export.destination is None:
        return
    from dspark_trainer.runtime.publish_step import publish_export

    board.update(message=f"publishing the draft to {config.export.destination}")
    uri = publish_export(config, str(board.snapshot().draft_path or config.output_dir))
    board.update(draft_uri=uri, message=f"draft published to {uri}")


def run(config: JobConfig, exit_on_complete: bool | None = None) -> int:
    """Run this rank; returns the process exit code. Config problems are found before any process
    group, model or server starts (exit code 2)."""
    import torch

    from dspark_trainer.runtime.dist import init_distributed, shutdown_distributed
    from dspark_trainer.runtime.preflight import plan_run
    from dspark_trainer.runtime.trainer import TrainingRun

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    setup_logging(rank)
    with contextlib.suppress(OSError, ValueError):  # no real stderr (e.g. captured): no stack dumps
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` prints every thread's stack
    if exit_on_complete is None:
        exit_on_complete = config.runtime.exit_on_complete or env_flag(EXIT_ENV)
    stop = StopRequest()
    board = ProgressBoard()
    board.update(world_size=world_size)
    metrics = TrainerMetrics()
    server: MetricsServer | None = None
    status: StatusSink | None = None
    if rank == 0:
        status = make_status_sink(config.job, config.metrics.status_interval_seconds)
    try:
        marker = read_marker(config.output_dir)
        plan = None if marker is not None else plan_run(config, world_size)
        stop.install()
        if rank == 0 and config.metrics.enabled:
            server = MetricsServer(metrics.registry, board.as_json, port=config.metrics.port).start()
            log.info("metrics on :%d (/metrics, /progress)", server.port)
        if plan is None:
            assert marker is not None
            log.info("%s holds a completed run (step %s); not training again", config.output_dir, marker.get("step"))
            board.update(state="Completed", step=int(marker.get("step") or 0), draft_path=config.output_dir,
                         samples=int(marker.get("samples") or 0), loss=marker.get("loss"), tau=marker.get("tau"),
                         message="already completed")
            metrics.completed.set(1)
            outcome = "completed"
            if rank == 0:  # a run that completed but failed to publish publishes now
                publish(config, board)
        else:
            ctx = init_distributed(config.runtime.device, config.runtime.dist_timeout_seconds)
            if ctx.device.type == "cpu" and "OMP_NUM_THREADS" in os.environ:
                torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
            source = make_source(config, plan.target_dir, plan.layer_ids, ctx.device, ctx.rank)
            training = TrainingRun(config, plan, ctx, load_draft_api(), source, board, metrics, stop, status)
            try:
                training.setup()
                outcome = training.run()
                if outcome == "completed":
                    out = training.export()
                    # With an evaluation to run, the job is not complete before its result is in the status.
                    done = "Completed" if config.evaluation is None else "Running"
                    board.update(state=done, draft_path=str(out), message="draft exported")
                    metrics.completed.set(1)
            finally:
                training.close()
            shutdown_distributed(together=True)
            if rank == 0 and outcome == "completed":
                publish(config, board)
            if rank == 0 and outcome == "completed" and config.evaluation is not None:
                from dspark_trainer.runtime.final_eval import evaluate_export

                board.update(message="evaluating the draft by speculative decoding")
                if status is not None:
                    status.report(board.status_fields(), force=True)
                result = evaluate_export(config, plan.target_dir, str(board.snapshot().draft_path or config.output_dir),
                                         metrics.registry)
                board.update(state="Completed", evaluation=result, message="draft exported and evaluated")
        final_wait = config.metrics.final_scrape_timeout_seconds
        if outcome == "completed" and server is not None and final_wait > 0 and not server.wait_for_scrape(final_wait):
            log.warning("no scrape of /metrics in %.0fs after training: Prometheus may miss the final values",
                        final_wait)
        if status is not None:
            fields = board.status_fields()
            if outcome == "completed":
                status.completed(str(fields.pop("draft_path", config.output_dir)), **fields)
            else:
                status.report(fields, force=True)
        if outcome == "completed" and not exit_on_complete:
            wait_until_stopped(stop)
        return 0
    except ConfigError as exc:
        if rank == 0:
            log.error("%s", exc)
        board.update(state="Failed", message=str(exc)[:4000])
        if status is not None:  # a restart cannot fix a bad config: the operator marks the job Failed
            status.failed(str(exc))
        return 2
    except Exception as exc:
        log.exception("training failed")
        # Not reported as Failed: the operator's gang restart (resume from the checkpoint) may fix it.
        board.update(message=f"{type(exc).__name__}: {exc}"[:4000])
        if status is not None:
            status.report({"message": f"{type(exc).__name__}: {exc}"}, force=True)
        raise
    finally:
        if status is not None:
            status.close()
        if server is not None:
            server.stop()
        shutdown_distributed()
