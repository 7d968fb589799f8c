"""Parse a sglang.launch_server argv with SGLang's own parser (run as a subprocess, with the pinned SGLang on
sys.path): `python sglang_parse_argv.py ARGV_JSON`. Prints the parsed capture-related fields as JSON on
success; exits 2 (argparse's usage error, e.g. an unknown flag) or 3 (SGLang's own validation of the aux
hidden-state capture refused the combination), with the reason on stderr."""

from __future__ import annotations

import argparse
import json
import sys

FIELDS = (
    "model_path", "revision", "dtype", "tp_size", "host", "port", "chunked_prefill_size", "disable_radix_cache",
    "enable_metrics", "enable_return_aux_hidden_states", "speculative_algorithm",
    "return_aux_hidden_state_layer_ids", "context_length", "mem_fraction_static", "chat_template",
    "speculative_draft_model_path",
)


def main() -> int:
    argv = json.loads(sys.argv[1])
    from sglang.srt.arg_groups.validation_hook import handle_aux_hidden_state_capture
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    namespace = parser.parse_args(argv)  # exits 2 on an unknown flag or a bad value
    server_args = ServerArgs.from_cli_args(namespace)
    try:
        handle_aux_hidden_state_capture(server_args)
    except ValueError as exc:
        print(f"SGLang refuses the capture flags: {exc}", file=sys.stderr)
        return 3
    print(json.dumps({name: getattr(namespace, name, None) for name in FIELDS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
