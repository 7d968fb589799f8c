"""`dspark mooncake-master`: the Mooncake master role of a job.

    dspark mooncake-master --config /etc/dspark/job.yaml     # default: $DSPARK_JOB_CONFIG

Execs `mooncake_master` listening on the ports of the job config's transport section (the same
addresses the capture servers and trainer ranks connect to). `--print-args` shows the command line.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

PROG = "dspark mooncake-master"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="the job config (default: $DSPARK_JOB_CONFIG)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address (0.0.0.0)")
    parser.add_argument("--print-args", action="store_true", help="print the mooncake_master command line and exit")


def master_command(config_path: str | None, host: str) -> list[str]:
    """The whole `mooncake_master` command of this job (raises ConfigError, FileNotFoundError)."""
    from dspark_trainer.config.job import load_job_config
    from dspark_trainer.transport.master import find_master_binary, master_args

    config = load_job_config(config_path)
    return [find_master_binary(), *master_args(config.transport, host=host)]


def run(args: argparse.Namespace) -> int:
    from dspark_trainer.config.training import ConfigError

    try:
        command = master_command(args.config, args.host)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.print_args:
        print(shlex.join(command))
        return 0
    print(f"{PROG}: starting {shlex.join(command)}", flush=True)
    os.execv(command[0], command)
