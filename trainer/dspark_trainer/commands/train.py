"""`dspark train`: the torchrun entry point (`--config FILE`), or the embedded one-machine pipeline
(`--local [CONFIG]`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="job config (YAML or JSON, camelCase or snake_case keys); default: $DSPARK_JOB_CONFIG",
    )
    parser.add_argument(
        "--exit-on-complete",
        action="store_true",
        default=None,
        help="exit when done instead of staying alive until SIGTERM (also DSPARK_EXIT_ON_COMPLETE=1)",
    )
    local = parser.add_argument_group("embedded pipeline (--local)")
    local.add_argument(
        "--local",
        nargs="?",
        const="",
        default=None,
        metavar="CONFIG",
        help="run everything on this machine: tiny target, Mooncake master, capture server, torchrun "
        "(default config: the bundled local demo)",
    )
    local.add_argument("--workdir", default=".demo", help="where the local pipeline writes everything (.demo)")
    local.add_argument("--nproc", type=int, default=2, help="trainer processes (torchrun --nproc-per-node, 2)")
    local.add_argument("--device", choices=["cpu", "cuda"], default=None, help="override runtime.device")
    local.add_argument(
        "--capture-devices",
        metavar="DEV[,DEV...]",
        default=None,
        help="start one reference capture server per entry, all feeding the trainer: cpu, or cuda:N (that "
        "server sees only GPU N of the GPUs visible here); e.g. cuda:2,cuda:3. Default: one server, on cuda:0 "
        "with --device cuda, else on the CPU",
    )
    local.add_argument("--fresh", action="store_true", help="delete the previous run's outputs under --workdir")
    local.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")


def run(args: argparse.Namespace) -> int:
    from dspark_trainer.config.job import load_job_config
    from dspark_trainer.config.training import ConfigError

    if args.local is not None:
        from dspark_trainer.local.pipeline import LocalOptions, run_local
        from dspark_trainer.local.services import parse_capture_devices

        options = LocalOptions(
            config_path=args.local or None,
            workdir=args.workdir,
            nproc=args.nproc,
            device=args.device,
            fresh=args.fresh,
            progress_bar=not args.no_progress,
            capture_devices=None if args.capture_devices is None else parse_capture_devices(args.capture_devices),
        )
        return run_local(options)
    try:
        config = load_job_config(args.config)
    except ConfigError as exc:
        print(f"dspark train: {exc}", file=sys.stderr)
        return 2
    from dspark_trainer.runtime.main import run as run_trainer

    code = run_trainer(config, exit_on_complete=args.exit_on_complete)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        exit_worker_now(code)
    return code


def exit_worker_now(code: int) -> NoReturn:
    """End a torchrun worker whose run is over without the interpreter's teardown.

    Everything the run writes is written and closed by now; what teardown would still do is destroy
    the C++ threads of torch's distributed runtime, which intermittently aborts the process
    ("terminate called without an active exception", exit -6) and makes torchrun report a finished
    run as failed. Errors never come here: they propagate as exceptions.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
