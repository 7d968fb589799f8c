"""The training run of one rank: build, shard, resume, loop (steps, checkpoints, evals, stop
requests), export, completion."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError
from dspark_trainer.data.batching import CapturedSample, MicroBatch, collate
from dspark_trainer.data.stream import RankStream, TokenizedSample, encode_record
from dspark_trainer.runtime.checkpoint import CheckpointManager, ModelOptimizerState
from dspark_trainer.runtime.completion import write_marker
from dspark_trainer.runtime.dist import (
    DistContext,
    all_gather_objects,
    all_reduce_max,
    all_reduce_sum,
    barrier,
)
from dspark_trainer.runtime.draft_api import DraftAPI, Quality
from dspark_trainer.runtime.fsdp import build_optimizer, build_scheduler, param_dtype_for, shard_model
from dspark_trainer.runtime.lr_schedule import lr_at, warmup_steps
from dspark_trainer.runtime.metrics import TrainerMetrics
from dspark_trainer.runtime.preflight import RunPlan, epochs_done
from dspark_trainer.runtime.progress import ProgressBoard
from dspark_trainer.runtime.sample_log import SampleLog
from dspark_trainer.runtime.signals import StopRequest
from dspark_trainer.runtime.sources import HiddenStateSource
from dspark_trainer.runtime.status import StatusSink
from dspark_trainer.runtime.step import StepResult, eval_batches, train_step
from dspark_trainer.util.prefetch import ThreadPrefetch

log = logging.getLogger("dspark.trainer")


class TrainingRun:
    """Owns the model, optimizer and data stream of this rank for one run."""

    def __init__(
        self,
        config: JobConfig,
        plan: RunPlan,
        ctx: DistContext,
        api: DraftAPI,
        source: HiddenStateSource,
        board: ProgressBoard,
        metrics: TrainerMetrics,
        stop: StopRequest,
        status: StatusSink | None,
    ) -> None:
        self.config = config
        self.plan = plan
        self.ctx = ctx
        self.api = api
        self.source = source
        self.board = board
        self.metrics = metrics
        self.stop = stop
        self.status = status
        self.step = 0
        self.cursor = 0
        self.samples = 0
        self.tokens = 0
        self.skipped = 0
        self.last_checkpoint_step: int | None = None
        self._acked_request: str | None = None
        self.param_dtype = param_dtype_for(config.runtime.precision, ctx.device)
        self.ckpt = CheckpointManager(config.checkpoint.dir, config.checkpoint.keep_last, ctx.rank)
        self.sample_log = SampleLog(config.runtime.sample_log_dir, ctx.rank) if config.runtime.sample_log_dir else None
        self.eval_samples = self._eval_samples()
        self._prefetchers: list[ThreadPrefetch[TokenizedSample]] = []

    # ---- set-up -------------------------------------------------------------------------------
    def setup(self) -> None:
        torch.manual_seed(self.config.schedule.seed)
        model = self.api.build_model(self.config, self.plan.target_dir, self.plan.layer_ids, self.ctx.device)
        shard_model(model, self.api.decoder_layers(model), self.ctx.device, self.ctx.world_size, self.param_dtype,
                    split_master=self.config.optimizer.master_weights == "split")
        self.model = model
        self.optimizer = build_optimizer(model, self.config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, self.config.optimizer, self.plan.total_steps)
        self.metrics.total_steps.set(self.plan.total_steps)
        self.board.update(total=self.plan.total_steps, world_size=self.ctx.world_size)
        self._resume()

    def _set_schedule_position(self, step: int) -> None:
        """Put the LR schedule at ``step`` of THIS run's plan (the total may differ from the checkpoint's)."""
        self.scheduler.last_epoch = step
        opt = self.config.optimizer
        warm = warmup_steps(self.plan.total_steps, opt.warmup_ratio)
        lr = lr_at(step, self.plan.total_steps, warm, opt.learning_rate, opt.min_learning_rate)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scheduler._last_lr = [lr for _ in self.optimizer.param_groups]

    def _app_state(self) -> dict[str, Any]:
        return {"train": ModelOptimizerState(self.model, self.optimizer)}

    def _resume(self) -> None:
        latest = self.ckpt.latest()
        if latest is None:
            if self.sample_log:
                self.sample_log.truncate_after(0)
            return
        _, path = latest
        state = self.ckpt.load(path, self._app_state())
        if int(state["world_size"]) != self.ctx.world_size:
            raise ConfigError(
                f"checkpoint.dir: {path} was written by {state['world_size']} ranks, this run has "
                f"{self.ctx.world_size}; resuming the data order exactly needs the same number of ranks "
                "(or start from a fresh checkpoint.dir)"
            )
        mine = state["ranks"][self.ctx.rank]
        self.cursor = int(mine["cursor"])
        torch.set_rng_state(mine["rng_cpu"])
        if self.ctx.device.type == "cuda" and mine.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(mine["rng_cuda"], self.ctx.device)
        self.step = int(state["step"])
        self._set_schedule_position(self.step)
        self.samples = int(state["samples"])
        self.tokens = int(state["tokens"])
        self.skipped = int(state["skipped"])
        self.last_checkpoint_step = self.step
        if self.sample_log:
            self.sample_log.truncate_after(self.step)
        self.metrics.step.set(self.step)
        self.metrics.samples.inc(self.samples)
        self.metrics.tokens.inc(self.tokens)
        self.metrics.skipped.inc(self.skipped)
        self.metrics.last_checkpoint_step.set(self.step)
        self.board.update(step=self.step, samples=self.samples, tokens=self.tokens, skipped_samples=self.skipped,
                          last_checkpoint=str(path), last_checkpoint_step=self.step,
                          epoch=epochs_done(self.plan, self.step))
        log.info("resumed from %s (step %d)", path, self.step)

    # ---- data -------------------------------------------------------------------------------------
    def _stream(self) -> Iterator[CapturedSample]:
        stream = RankStream(
            self.plan.train,
            self.plan.chat_tokenizer,
            world_size=self.ctx.world_size,
            rank=self.ctx.rank,
            seed=self.config.schedule.seed,
            shuffle=self.config.dataset.shuffle,
            min_loss_tokens=self.config.dataset.min_loss_tokens,
            start_position=self.cursor,
        )
        # tokenisation (chat template + tokenizer, ~10 ms for a 2k-token conversation) runs in its own
        # thread, ahead of the capture requests, instead of in the training loop's data wait
        ahead = ThreadPrefetch(stream, depth=2 * self.config.capture.window + 4, name="tokenize-ahead")
        self._prefetchers.append(ahead)
        return self.source.iterate(ahead)

    def _next_samples(self, data: Iterator[CapturedSample]) -> tuple[list[CapturedSample], float]:
        out: list[CapturedSample] = []
        waited = 0.0
        for _ in range(self.plan.samples_per_rank):
            start = time.perf_counter()
            out.append(next(data))
            waited += time.perf_counter() - start
        return out, waited

    def _micro_batches(self, samples: list[CapturedSample]) -> list[MicroBatch]:
        size = self.config.schedule.micro_batch_size
        chunks = [samples[i : i + size] for i in range(0, len(samples), size)]
        return [collate(chunk, self.config.schedule.seed).to(self.ctx.device, self.param_dtype) for chunk in chunks]

    def _eval_samples(self) -> list[TokenizedSample]:
        out: list[TokenizedSample] = []
        for record in self.plan.held_out:
            sample = encode_record(record, self.plan.chat_tokenizer, self.config.dataset.min_loss_tokens)
            if sample is not None:
                out.append(sample)
            if len(out) >= self.config.eval.max_samples:
                break
        return out

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> str:
        """Train to the end ("completed") or until a stop request ("stopped")."""
        self.board.update(state="Running")
        self._report(force=True)
        data = self._stream()
        total = self.plan.total_steps
        self.board.reset_throughput()
        self.board.record_throughput(self.samples, self.tokens)
        while self.step < total:
            stop, checkpoint_request = self._control()
            if checkpoint_request is not None:
                path = self._checkpoint()
                if self.status is not None:
                    self.status.checkpointed(str(path), step=self.step, request_id=checkpoint_request)
                self._acked_request = checkpoint_request
            if stop:
                if self.last_checkpoint_step != self.step:
                    self._checkpoint()
                note = f"stopped at step {self.step} ({self.stop.signal_name})"
                self.board.update(state="Checkpointed", message=note)
                self._report(force=True)
                return "stopped"
            self._one_step(data)
            if self.step % self.config.checkpoint.interval_steps == 0:
                self._checkpoint()
            if self.step % self.config.eval.interval_steps == 0 and self.step < total:
                self._evaluate()
        if self.last_checkpoint_step != self.step:
            self._checkpoint()
        self._evaluate()
        return "completed"

    def _control(self) -> tuple[bool, str | None]:
        """(stop requested on any rank, the operator's new checkpoint request id) agreed by all ranks."""
        request = self.status.checkpoint_request() if self.status is not None else None
        fresh = request is not None and request != self._acked_request
        flags = torch.tensor([float(self.stop.is_set()), float(fresh)], device=self.ctx.device)
        agreed = all_reduce_max(flags).tolist()
        return agreed[0] > 0, (request or "checkpoint") if agreed[1] > 0 else None

    def _one_step(self, data: Iterator[CapturedSample]) -> None:
        started = time.perf_counter()
        captured, waited = self._next_samples(data)
        batches = self._micro_batches(captured)
        result = train_step(
            self.model, self.api, self.optimizer, self.scheduler, batches,
            device=self.ctx.device, world_size=self.ctx.world_size, grad_clip=self.config.optimizer.grad_clip,
            defer_gradient_sync=not self.config.runtime.reduce_gradients_every_micro_batch,
            loss_normalization=self.config.schedule.loss_normalization,
        )
        self.step += 1
        self.cursor = captured[-1].sample.next_position
        local_counts = torch.tensor(
            [len(captured), sum(c.sample.num_tokens for c in captured), sum(c.sample.skipped_before for c in captured),
             sum(c.nbytes for c in captured)], dtype=torch.float64, device=self.ctx.device)
        counts = all_reduce_sum(local_counts).tolist()
        wait_max = float(all_reduce_max(torch.tensor([waited], dtype=torch.float64, device=self.ctx.device)).item())
        peak_memory = self._peak_gpu_memory()
        get_seconds = [s for per_rank in all_gather_objects([c.fetch_seconds for c in captured]) for s in per_rank]
        if self.sample_log:
            self.sample_log.write(self.step, [c.sample.uid for c in captured])
        n_samples, n_tokens, n_skipped, n_bytes = (int(v) for v in counts)
        self.samples += n_samples
        self.tokens += n_tokens
        self.skipped += n_skipped
        self._publish_step(result, time.perf_counter() - started, wait_max, n_samples, n_tokens, n_skipped,
                           n_bytes, get_seconds, peak_memory)

    def _peak_gpu_memory(self) -> int | None:
        """Peak bytes torch allocated on any rank's GPU since the start; None on CPU."""
        if self.ctx.device.type != "cuda":
            return None
        local = torch.tensor([float(torch.cuda.max_memory_allocated(self.ctx.device))], dtype=torch.float64,
                             device=self.ctx.device)
        return int(all_reduce_max(local).item())

    def _publish_step(self, result: StepResult, seconds: float, wait: float, n_samples: int, n_tokens: int,
                      n_skipped: int, n_bytes: int, get_seconds: list[float], peak_memory: int | None) -> None:
        m, q = self.metrics, result.quality
        m.step.set(self.step)
        m.epoch.set(epochs_done(self.plan, self.step))
        m.samples.inc(n_samples)
        m.tokens.inc(n_tokens)
        m.skipped.inc(n_skipped)
        m.train.update(q.loss, q.accept_rate, q.tau, q.acc, q.sim_acc_len)
        if math.isfinite(result.grad_norm):
            m.grad_norm.set(result.grad_norm)
        m.learning_rate.set(result.learning_rate)
        m.step_seconds.observe(seconds)
        m.data_wait_seconds.observe(wait)
        m.transport_bytes.inc(n_bytes)
        for s in get_seconds:
            m.transport_get_seconds.observe(s)
        self.board.record_throughput(self.samples, self.tokens)
        snap = self.board.snapshot()
        if snap.throughput is not None:
            m.samples_per_second.set(snap.throughput)
        if peak_memory is not None:
            m.gpu_memory_peak_bytes.set(peak_memory)
        self.board.update(
            step=self.step, epoch=epochs_done(self.plan, self.step), samples=self.samples, tokens=self.tokens,
            skipped_samples=self.skipped, loss=q.loss.get("total"), loss_terms=dict(q.loss), tau=q.tau,
            accept_rate=list(q.accept_rate), acc=list(q.acc), sim_acc_len=q.sim_acc_len,
            grad_norm=result.grad_norm, learning_rate=result.learning_rate, gpu_memory_peak_bytes=peak_memory,
        )
        if not result.applied:
            log.warning("step %d: non-finite gradient norm, update skipped", self.step)
        every = self.config.runtime.log_interval_steps
        if self.ctx.is_main and (self.step % every == 0 or self.step in (1, self.plan.total_steps)):
            memory = "" if peak_memory is None else f" peak GPU memory {peak_memory / 2**30:.1f} GiB"
            log.info(
                "step %d/%d loss %.4f tau %.3f lr %.2e grad %.3f %.1f samples/s wait %.2fs%s",
                self.step, self.plan.total_steps, q.loss.get("total", float("nan")), q.tau, result.learning_rate,
                result.grad_norm, snap.throughput or 0.0, wait, memory,
            )
        self._report()

    # ---- checkpoints, eval, export --------------------------------------------------------------
    def _checkpoint(self) -> Path:
        local = {
            "cursor": self.cursor,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.ctx.device) if self.ctx.device.type == "cuda" else None,
        }
        ranks = all_gather_objects(local)
        state = {
            "step": self.step, "world_size": self.ctx.world_size, "ranks": ranks, "samples": self.samples,
            "tokens": self.tokens, "skipped": self.skipped, "scheduler": self.scheduler.state_dict(),
            "total_steps": self.plan.total_steps,
        }
        start = time.perf_counter()
        path = self.ckpt.save(self.step, self._app_state(), state)
        self.last_checkpoint_step = self.step
        self.metrics.last_checkpoint_step.set(self.step)
        self.board.update(last_checkpoint=str(path), last_checkpoint_step=self.step)
        log.info("checkpoint %s written in %.1fs", path, time.perf_counter() - start)
        self._report(force=True)
        return path

    def _evaluate(self) -> Quality | None:
        samples = self.eval_samples
        if not samples:
            return None
        world, rank, size = self.ctx.world_size, self.ctx.rank, self.config.schedule.micro_batch_size
        mine = samples[rank::world]
        n_batches = math.ceil(math.ceil(len(samples) / world) / size)
        captured = list(self.source.iterate(mine)) if mine else []
        batches = [captured[i : i + size] for i in range(0, len(captured), size)]
        counted = [True] * len(batches)
        if len(batches) < n_batches:
            filler = list(self.source.iterate(samples[:1]))
            batches += [filler] * (n_batches - len(batches))
            counted += [False] * (n_batches - len(counted))
        mbs = [collate(b, self.config.schedule.seed).to(self.ctx.device, self.param_dtype) for b in batches]
        quality = eval_batches(self.model, self.api, mbs, counted, device=self.ctx.device, world_size=world)
        self.metrics.eval.update(quality.loss, quality.accept_rate, quality.tau, quality.acc, quality.sim_acc_len)
        self.metrics.eval_step.set(self.step)
        self.metrics.eval_samples.set(len(samples))
        self.board.update(eval={"step": self.step, "samples": len(samples), "loss": quality.loss.get("total"),
                                "loss_terms": dict(quality.loss), "tau": quality.tau,
                                "accept_rate": list(quality.accept_rate), "acc": list(quality.acc),
                                "sim_acc_len": quality.sim_acc_len})
        if self.ctx.is_main:
            log.info("eval at step %d on %d samples: loss %.4f tau %.3f", self.step, len(samples),
                     quality.loss.get("total", float("nan")), quality.tau)
        return quality

    def export(self) -> Path:
        """Gather the full weights and write the DSpark checkpoint and the completion marker (rank 0)."""
        full: dict[str, torch.Tensor] = get_model_state_dict(  # type: ignore[assignment]
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        out = Path(self.config.output_dir)
        if self.ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            self.api.export(full, self.config, self.plan.target_dir, self.plan.layer_ids, out)
            snap = self.board.snapshot()
            write_marker(out, {"step": self.step, "samples": self.samples, "loss": snap.loss, "tau": snap.tau,
                               "eval": snap.eval, "draft_path": str(out)})
            log.info("draft exported to %s", out)
        barrier()
        return out

    def _report(self, force: bool = False) -> None:
        if self.status is not None:
            self.status.report(self.board.status_fields(), force=force)

    def close(self) -> None:
        for ahead in self._prefetchers:
            ahead.close()
        if self.sample_log:
            self.sample_log.close()
        self.source.close()
