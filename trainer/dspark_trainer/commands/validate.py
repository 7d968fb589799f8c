"""`dspark validate FILE...`: the operator's own validation of DSparkTrainingJob manifests, offline.

    dspark validate examples/minimal-job.yaml examples/production-job.yaml

Every DSparkTrainingJob in the files (multi-document YAML or a List) is checked exactly as the operator
checks it before creating anything: the spec schema, the cross-field rules, and the job config rendered
from it. Prints one line per job (`ok` or the field and the problem); exit code 0 when all are valid,
1 when one is not, 2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KIND = "DSparkTrainingJob"
API_VERSION = "dspark.io/v1alpha1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="manifest files (YAML or JSON; - for stdin)")


def documents(path: str) -> Iterator[Any]:
    """The YAML documents of a file (items of a `kind: List` flattened); raises ValueError with the reason."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            yield from doc.get("items") or []
        elif doc is not None:
            yield doc


def check(doc: Any) -> str | None:
    """The operator's verdict on one manifest: None when valid, else `field: problem`."""
    from dspark_operator.api import parse_job

    if not isinstance(doc, dict):
        return f"not a manifest (a YAML mapping), got {type(doc).__name__}"
    if doc.get("apiVersion") != API_VERSION:
        return f"apiVersion: {doc.get('apiVersion')!r} is not {API_VERSION}"
    job = parse_job(doc)
    return None if job.invalid is None else str(job.invalid)


def run(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            docs = list(documents(path))
        except ValueError as exc:
            print(f"dspark validate: {exc}", file=sys.stderr)
            return 2
        jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
        if not jobs:
            print(f"{path}: no {KIND} in the file", file=sys.stderr)
            failed = True
        for doc in jobs:
            name = (doc.get("metadata") or {}).get("name", "<no name>")
            problem = check(doc)
            print(f"{path}: {KIND} {name}: " + ("ok" if problem is None else f"invalid: {problem}"))
            failed = failed or problem is not None
    return 1 if failed else 0
