"""`dspark train`: not implemented yet (see the open issues)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments until the command exists."""
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Explain that the command is not there yet and fail."""
    print("dspark train: this command is not built yet; see the project's open issues.", file=sys.stderr)
    return 2
