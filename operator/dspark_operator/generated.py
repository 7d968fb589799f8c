"""Files generated from the models and committed (the CRD by :mod:`dspark_operator.crdgen`, the chart's
trainer-status policy by :mod:`dspark_operator.policy`): their YAML style and their one command line.

    python -m <module>            # print the file
    python -m <module> --write    # (re)write it
    python -m <module> --check    # exit 1 when the committed file is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml


def dump_yaml(obj: Any) -> str:
    """``obj`` as block YAML in the generated files' style (key order kept, lines up to 110 characters)."""
    return str(yaml.safe_dump(obj, sort_keys=False, width=110))


def generated_file_main(
    argv: Sequence[str] | None,
    *,
    module: str,
    description: str,
    what: str,
    output_label: str,
    default_output: Path,
    render: Callable[[], str],
) -> int:
    """The command line of a generated file: print ``render()``, ``--write`` it to ``--output`` or ``--check``
    that the file there is up to date (exit 1 otherwise). ``what`` names the file in the help texts
    (``the CRD file``), ``output_label`` in the help of ``--output``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {what}")
    group.add_argument("--check", action="store_true", help=f"exit 1 when {what} is out of date")
    parser.add_argument(
        "--output", type=Path, default=default_output, help=f"{output_label} (default {default_output})"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}")
        return 0
    if args.check:
        current = args.output.read_text() if args.output.exists() else None
        if current != text:
            print(f"{args.output} is out of date; run: python -m {module} --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0
