"""`dspark`: the user command line. Each subcommand lives in its own module under
``dspark_trainer.commands`` and is imported only when used, so `dspark --help` is fast and
needs no torch."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module under dspark_trainer.commands, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a DSpark draft (torchrun entry point, or --local for the embedded pipeline)"),
    "capture-server": ("capture_server", "serve a job's capture engine (SGLang or reference), or a standalone one"),
    "mooncake-master": ("mooncake_master", "run a job's Mooncake master (ports from the job config)"),
    "data": ("data", "prepare training data (regenerate responses with the target)"),
    "export": ("export", "write an exported draft again for serving (dtype, with or without the frozen weights)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each subcommand module adds its own arguments."""
    parser = argparse.ArgumentParser(prog="dspark", description="Train DSpark speculative-decoding drafts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"dspark_trainer.commands.{module_name}")
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    result: int = args._run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
