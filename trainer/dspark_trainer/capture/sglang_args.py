"""The SGLang command line of a job's capture server, derived from the job config (torch-free).

``sglang_server_args`` is the one place that knows which SGLang flags the hidden-state capture needs;
the capture-server role (``dspark capture-server`` with ``inference.engine: sglang``) execs
``python3 -m sglang.launch_server`` with them, and the operator refuses ``inference.extraArgs`` that
would override one of them (``OWNED_FLAGS``).
"""

from __future__ import annotations

from collections.abc import Sequence

from dspark_trainer.config.job import JobConfig

PLUGIN_ENV = "SGLANG_PLUGINS"
"""SGLang's plugin allow-list variable; the capture server sets it to the dspark plugin's entry point."""
PLUGIN_NAME = "dspark_capture"
CAPTURE_CONVENTION = "DSPARK"
"""--speculative-algorithm under --enable-return-aux-hidden-states names the capture convention only."""
LISTEN_HOST = "0.0.0.0"

# Flags sglang_server_args sets from the job config (both spellings where SGLang has two).
OWNED_FLAGS = frozenset(
    {
        "--model-path",
        "--model",
        "--revision",
        "--dtype",
        "--tp-size",
        "--tensor-parallel-size",
        "--host",
        "--port",
        "--chunked-prefill-size",
        "--disable-radix-cache",
        "--enable-metrics",
        "--enable-return-aux-hidden-states",
        "--speculative-algorithm",
        "--return-aux-hidden-state-layer-ids",
        "--context-length",
        "--mem-fraction-static",
        "--chat-template",
        "--speculative-draft-model-path",
    }
)

# What the capture needs of the parsed arguments (SGLang's own names), checked by the tests.
CAPTURE_REQUIREMENTS = {
    "enable_return_aux_hidden_states": True,
    "speculative_algorithm": CAPTURE_CONVENTION,
    "chunked_prefill_size": -1,
    "disable_radix_cache": True,
    "enable_metrics": True,
}


def owned_flag(arg: str) -> str | None:
    """The owned flag an extra argument would set (``--port=1`` -> ``--port``), else None."""
    flag = arg.split("=", 1)[0]
    return flag if flag in OWNED_FLAGS else None


def sglang_server_args(
    config: JobConfig, layer_ids: Sequence[int], *, chat_template_file: str | None = None
) -> list[str]:
    """Arguments of ``python3 -m sglang.launch_server`` for this job's capture server.

    ``layer_ids`` are the resolved target layers (Hugging Face numbering: the output of layer i);
    ``chat_template_file`` is the dataset's chat template written to a file (SGLang reads a path).
    """
    inf = config.inference
    target = config.target
    if any(i < 0 for i in layer_ids):
        raise ValueError(
            f"draft.targetLayerIds {list(layer_ids)}: SGLang cannot capture the embedding output (-1); "
            "use layers >= 0 or inference.engine: reference"
        )
    args = ["--model-path", target.model]
    if target.revision:
        args += ["--revision", target.revision]
    args += [
        "--dtype", target.dtype,
        "--tp-size", str(inf.tensor_parallel_size),
        "--host", LISTEN_HOST,
        "--port", str(inf.port),
        # Hidden-state capture: aux layers + the final hidden state, no draft loaded.
        "--enable-return-aux-hidden-states",
        "--speculative-algorithm", CAPTURE_CONVENTION,
        "--return-aux-hidden-state-layer-ids", *[str(i) for i in layer_ids],
        # Every prompt token in one prefill, never a prefix-cache hit.
        "--chunked-prefill-size", "-1",
        "--disable-radix-cache",
        "--enable-metrics",
    ]
    context_length = config.context_length
    if context_length is not None:
        args += ["--context-length", str(context_length)]
    if inf.mem_fraction_static is not None:
        args += ["--mem-fraction-static", str(inf.mem_fraction_static)]
    if chat_template_file is not None:
        args += ["--chat-template", chat_template_file]
    for i, extra in enumerate(inf.extra_args):
        flag = owned_flag(extra)
        if flag is not None:
            raise ValueError(f"inference.extraArgs[{i}]: {flag} is derived from the job config and may not be given")
    return [*args, *inf.extra_args]
