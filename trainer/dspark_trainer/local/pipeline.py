"""`dspark train --local [CONFIG]`: the whole pipeline on one machine, nothing downloaded.

1. Create the tiny Qwen3 target (+ tokenizer with a chat template) under the work directory when the
   config asks for ``builtin:tiny-qwen3`` (once; later runs reuse it).
2. Check the config (the same start-up checks as the trainer) before anything starts.
3. Write the job config (``job.yaml``: loopback addresses, free ports) and start every role from it,
   as the operator's pods do: the Mooncake master, the reference capture server (one per
   ``--capture-devices`` entry when given: several servers feed the trainer together), then torchrun
   with ``--nproc`` workers; show a progress bar fed by the trainer's ``/progress`` endpoint.
4. Print where everything went. Every process started here is stopped on the way out, also on
   Ctrl-C or SIGTERM (the trainer first gets SIGTERM, so it writes a checkpoint; the next run resumes).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from dspark_trainer.assets import BUILTIN_PREFIX, LOCAL_DEMO_CONFIG
from dspark_trainer.config.job import InferenceEngine, JobConfig
from dspark_trainer.config.training import ConfigError, read_config_mapping
from dspark_trainer.local import services
from dspark_trainer.local.processes import ManagedProcess, ProcessSet
from dspark_trainer.runtime.completion import read_marker

TINY_TARGET = "builtin:tiny-qwen3"


@dataclass
class LocalOptions:
    config_path: str | None = None
    workdir: str = ".demo"
    nproc: int = 2
    device: str | None = None
    fresh: bool = False
    progress_bar: bool = True
    # One reference capture server per entry: "cpu", or "cuda:N" (that server sees only GPU N, as its
    # cuda:0). None: one server on the trainer's device (cuda:0 on CUDA, else cpu).
    capture_devices: list[str] | None = None


@dataclass
class Layout:
    """Where the local pipeline puts things."""

    root: Path

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "job.yaml"

    @property
    def mooncake(self) -> Path:
        return self.root / "mooncake"


def say(message: str) -> None:
    print(f"dspark: {message}", flush=True)


def _resolve_under(root: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value)
    return str(p if p.is_absolute() else root / p)


def local_config(raw: dict[str, Any], layout: Layout, options: LocalOptions) -> JobConfig:
    """The config as the local pipeline runs it (services filled in later by ``with_services``)."""
    data = json.loads(json.dumps(raw))  # a deep copy
    cfg = JobConfig.from_mapping(data, source=options.config_path or "local demo config")
    updates: dict[str, Any] = {}
    if cfg.target.model == TINY_TARGET:
        updates["target"] = cfg.target.model_copy(update={"model": str(layout.target)})
    elif cfg.target.model.startswith(BUILTIN_PREFIX):
        raise ConfigError(f"target.model: unknown builtin target {cfg.target.model!r}; known: {TINY_TARGET}")
    updates["checkpoint"] = cfg.checkpoint.model_copy(update={"dir": _resolve_under(layout.root, cfg.checkpoint.dir)})
    updates["output_dir"] = _resolve_under(layout.root, cfg.output_dir)
    runtime_update: dict[str, Any] = {
        "exit_on_complete": True,
        "sample_log_dir": _resolve_under(layout.root, cfg.runtime.sample_log_dir),
    }
    if options.device:
        runtime_update["device"] = options.device
    updates["runtime"] = cfg.runtime.model_copy(update=runtime_update)
    # The embedded pipeline serves the target with the reference engine (no SGLang here).
    updates["inference"] = cfg.inference.model_copy(update={"engine": InferenceEngine.REFERENCE})
    services.plan_capture_servers(options.capture_devices, cfg)  # bad capture devices: fail before anything starts
    if cfg.capture.mode == "remote" and not cfg.capture.endpoints:
        # A placeholder so the start-up checks pass; replaced by the real server's URL.
        updates["capture"] = cfg.capture.model_copy(update={"endpoints": ["http://127.0.0.1:1"]})
    return cfg.model_copy(update=updates)


def reset_outputs(cfg: JobConfig) -> None:
    for value in (cfg.checkpoint.dir, cfg.output_dir, cfg.runtime.sample_log_dir):
        if value and Path(value).exists():
            shutil.rmtree(value)


def fetch_progress(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (urllib.error.URLError, OSError, ValueError):
        return None


class ProgressView:
    """A tqdm bar (or plain lines) over the trainer's progress."""

    def __init__(self, enabled: bool) -> None:
        # A bar needs a terminal with a width (a pty of size 0, e.g. under `script`, gets plain lines).
        self.enabled = enabled and sys.stderr.isatty() and shutil.get_terminal_size((0, 0)).columns >= 40
        self.plain = not self.enabled
        self.bar: Any = None
        self.last_line_step = -1

    def update(self, progress: dict[str, Any]) -> None:
        step, total = int(progress.get("step") or 0), int(progress.get("total") or 0)
        loss, tau, sps = progress.get("loss"), progress.get("tau"), progress.get("throughput")
        fields = {
            "loss": f"{loss:.3f}" if loss is not None else "-",
            "tau": f"{tau:.2f}" if tau is not None else "-",
            "samples/s": f"{sps:.1f}" if sps is not None else "-",
        }
        if self.plain:
            if step > 0 and (step // 10 > self.last_line_step // 10 or (step == total and step != self.last_line_step)):
                self.last_line_step = step
                say(f"step {step}/{total}  " + "  ".join(f"{k} {v}" for k, v in fields.items()))
            return
        if self.bar is None and total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", desc="training", dynamic_ncols=True)
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(fields, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def watch_trainer(trainer: ManagedProcess, metrics_port: int, view: ProgressView) -> tuple[int, dict[str, Any]]:
    """Follow the trainer until it exits; returns (exit code, last progress seen)."""
    last: dict[str, Any] = {}
    while True:
        code = trainer.poll()
        progress = fetch_progress(metrics_port)
        if progress:
            last = progress
            view.update(progress)
        if code is not None:
            return code, last
        time.sleep(0.5)


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


def summary(cfg: JobConfig, layout: Layout, last: dict[str, Any], seconds: float) -> None:
    marker = read_marker(cfg.output_dir) or {}
    loss = marker.get("loss", last.get("loss"))
    tau = marker.get("tau", last.get("tau"))
    ev = marker.get("eval") or last.get("eval") or {}
    say(f"done in {seconds:.0f}s: {marker.get('step', last.get('step'))} steps, "
        f"{marker.get('samples', last.get('samples'))} samples")
    if loss is not None and tau is not None:
        say(f"final training loss {loss:.4f}, tau {tau:.3f}")
    if ev.get("loss") is not None:
        say(f"held-out eval ({ev.get('samples')} samples): loss {ev['loss']:.4f}, tau {ev.get('tau', 0):.3f}")
    rows = [
        ("draft (DSpark checkpoint)", cfg.output_dir),
        ("checkpoints", cfg.checkpoint.dir),
        ("target model", cfg.target.model),
        ("job config", str(layout.config)),
        ("logs", str(layout.logs)),
    ]
    if cfg.runtime.sample_log_dir:
        rows.append(("sample-id logs", cfg.runtime.sample_log_dir))
    width = max(len(name) for name, _ in rows)
    for name, where in rows:
        print(f"  {name:<{width}}  {where}", flush=True)


def run_local(options: LocalOptions) -> int:
    started = time.monotonic()
    layout = Layout(Path(options.workdir).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    try:
        raw = read_config_mapping(options.config_path or LOCAL_DEMO_CONFIG)
        cfg = local_config(raw, layout, options)
    except ConfigError as exc:
        print(f"dspark train --local: {exc}", file=sys.stderr)
        return 2
    if raw.get("target", {}).get("model") == TINY_TARGET:
        if not (layout.target / "config.json").is_file():
            say(f"creating the tiny Qwen3 target (random, then taught the demo conversations) in {layout.target}")
        services.ensure_tiny_target(layout.target)
    if options.fresh:
        reset_outputs(cfg)
    elif read_marker(cfg.output_dir) is not None:
        say(f"the previous run in {layout.root} completed; starting a fresh one")
        reset_outputs(cfg)
    elif cfg.checkpoint.dir and any(Path(cfg.checkpoint.dir).glob("step-*")):
        say(f"resuming the interrupted run from {cfg.checkpoint.dir} (use --fresh to start over)")

    from dspark_trainer.runtime.preflight import plan_run

    try:
        plan = plan_run(cfg, options.nproc)
    except ConfigError as exc:
        print(f"dspark train --local: {exc}", file=sys.stderr)
        return 2
    say(f"{len(plan.train)} training / {len(plan.held_out)} held-out conversations, {plan.total_steps} steps of "
        f"{cfg.schedule.global_batch_size} samples on {options.nproc} CPU workers")

    processes = ProcessSet()
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    view = ProgressView(options.progress_bar)
    trainer: ManagedProcess | None = None
    code = 1
    last: dict[str, Any] = {}
    try:
        cfg = services.start_services(cfg, layout, processes, say, capture_devices=options.capture_devices)
        say(f"starting torchrun with {options.nproc} workers (log: {layout.logs / 'trainer.log'})")
        trainer = processes.add(ManagedProcess(
            "trainer", services.torchrun_argv(layout.config, options.nproc), layout.logs / "trainer.log",
            env=services.worker_env(), stop_timeout=90,
        ))
        code, last = watch_trainer(trainer, cfg.metrics.port, view)
        view.close()
        if code != 0:
            say(f"the trainer failed (exit {code}); the end of {trainer.log_path}:")
            print(trainer.tail(40), file=sys.stderr)
            return code
    except (KeyboardInterrupt, _Terminated):
        view.close()
        say("interrupted: asking the trainer to checkpoint, then stopping every process")
        if trainer is not None:
            trainer.stop(timeout=90)
        code = 130
        return code
    except services.ServiceError as exc:
        view.close()
        say(str(exc))
        return 1
    finally:
        processes.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary(cfg, layout, last, time.monotonic() - started)
    return 0
