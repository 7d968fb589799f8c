"""Subcommands of the `dspark` CLI. Each module defines `add_arguments(parser)` and `run(args) -> int`,
and imports heavy dependencies (torch, transformers, ray) inside `run` only."""
