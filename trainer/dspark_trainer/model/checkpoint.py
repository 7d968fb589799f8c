"""Export to and import from the DSpark checkpoint directory (docs/model.md, "Checkpoint format").

A directory with ``config.json`` (the target's Qwen3 config with the DSpark fields, see
``DSparkModelConfig.to_checkpoint_config``, in the serving format of ``model.serving``: DSPARK or, for
``markov_rank == 0``, DFLASH) and ``model.safetensors`` holding exactly the weights the serving engines
load, under their names without prefix, with or without the frozen embedding / LM head. Tensors are
written as given (or cast to ``dtype``), contiguous, so reading the directory back gives bit-identical
weights.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dspark_trainer.model.config import DSparkModelConfig
from dspark_trainer.model.serving import (
    FROZEN_WEIGHTS,
    dtype_name_of,
    model_config_from_serving,
    serving_config,
    serving_state,
    serving_warnings,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

def expected_weight_shapes(cfg: DSparkModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight name of a draft with ``cfg`` and its shape: the checkpoint contract."""
    hid, vocab, rank = cfg.hidden_size, cfg.vocab_size, cfg.markov_rank
    q_out = cfg.num_attention_heads * cfg.head_dim
    kv_out = cfg.num_key_value_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embed_tokens.weight": (vocab, hid),
        "fc.weight": (hid, cfg.num_captured_layers * hid),
        "hidden_norm.weight": (hid,),
        "norm.weight": (hid,),
        "lm_head.weight": (vocab, hid),
    }
    for i in range(cfg.num_draft_layers):
        p = f"layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (q_out, hid)
        shapes[p + "self_attn.k_proj.weight"] = (kv_out, hid)
        shapes[p + "self_attn.v_proj.weight"] = (kv_out, hid)
        shapes[p + "self_attn.o_proj.weight"] = (hid, q_out)
        if cfg.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (q_out,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_out,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_out,)
            shapes[p + "self_attn.o_proj.bias"] = (hid,)
        shapes[p + "self_attn.q_norm.weight"] = (cfg.head_dim,)
        shapes[p + "self_attn.k_norm.weight"] = (cfg.head_dim,)
        shapes[p + "mlp.gate_proj.weight"] = (cfg.intermediate_size, hid)
        shapes[p + "mlp.up_proj.weight"] = (cfg.intermediate_size, hid)
        shapes[p + "mlp.down_proj.weight"] = (hid, cfg.intermediate_size)
        shapes[p + "input_layernorm.weight"] = (hid,)
        shapes[p + "post_attention_layernorm.weight"] = (hid,)
    if rank > 0:
        shapes["markov_head.markov_w1.weight"] = (vocab, rank)
        shapes["markov_head.markov_w2.weight"] = (vocab, rank)
        if cfg.markov_head_type == "gated":
            shapes["markov_head.gate_proj.weight"] = (rank, hid + rank)
            shapes["markov_head.gate_proj.bias"] = (rank,)
        elif cfg.markov_head_type == "rnn":
            shapes["markov_head.joint_proj.weight"] = (3 * rank, 2 * rank + hid)
            shapes["markov_head.joint_proj.bias"] = (3 * rank,)
    if cfg.enable_confidence_head:
        shapes["confidence_head.proj.weight"] = (1, cfg.confidence_input_size)
        shapes["confidence_head.proj.bias"] = (1,)
    return shapes


def has_frozen_weights(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` holds the frozen embedding and LM head (an export may leave both out)."""
    return all(n in state for n in FROZEN_WEIGHTS)


def check_state(state: Mapping[str, torch.Tensor], cfg: DSparkModelConfig) -> None:
    """Raise ValueError unless ``state`` has exactly the expected names and shapes (the frozen embedding and
    LM head may both be absent)."""
    expected = expected_weight_shapes(cfg)
    if not any(n in state for n in FROZEN_WEIGHTS):
        expected = {n: s for n, s in expected.items() if n not in FROZEN_WEIGHTS}
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        raise ValueError(f"draft weights do not match the config: missing {missing[:8]}, unknown {unknown[:8]}")
    bad = [f"{n}: {tuple(state[n].shape)} != {s}" for n, s in expected.items() if tuple(state[n].shape) != s]
    if bad:
        raise ValueError("draft weight shapes do not match the config: " + "; ".join(bad[:8]))


def export_checkpoint(
    state: Mapping[str, torch.Tensor],
    cfg: DSparkModelConfig,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    include_frozen: bool = True,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` to ``out_dir`` (created; files replaced atomically).

    ``state`` is a full (unsharded) state dict with the checkpoint's names, e.g. ``model.state_dict()``.
    ``dtype`` casts every tensor (e.g. ``torch.bfloat16`` for serving; the confidence head stays float32);
    default: keep each tensor's dtype. ``include_frozen=False`` leaves out the embedding and LM head, which
    the serving engines take from the target (the trainer's job export does). Logs a warning for each engine
    that cannot serve the draft (``model.serving.serving_warnings``).
    """
    check_state(state, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = serving_state(state, cfg, dtype=dtype, include_frozen=include_frozen)
    _atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    config = serving_config(cfg, dtype_name=dtype_name_of(tensors))
    _atomic_write(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    for warning in serving_warnings(cfg):
        log.warning("draft %s: %s", out, warning)
    return out


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temp file in the same directory, then rename. The file gets the usual mode of a new
    file (0666 minus the umask), not mkstemp's 0600, so a server running as another user can read it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_checkpoint_config(path: str | Path) -> DSparkModelConfig:
    """The ``DSparkModelConfig`` of a draft directory."""
    cfg_path = Path(path) / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} does not exist: not a DSpark draft directory")
    data = json.loads(cfg_path.read_text())
    try:
        return model_config_from_serving(data)
    except ValueError as exc:
        raise ValueError(f"{cfg_path}: {exc}") from None


def read_checkpoint_state(path: str | Path, *, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the draft's ``model.safetensors`` (as stored: same dtype, same bits)."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist: not a DSpark draft directory")
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(weights), framework="pt", device=str(device)) as f:
        for name in f.keys():  # noqa: SIM118
            out[name] = f.get_tensor(name)
    return out


def import_checkpoint(path: str | Path) -> tuple[DSparkModelConfig, dict[str, torch.Tensor]]:
    """``(config, state)`` of a draft directory, checked against each other."""
    cfg = read_checkpoint_config(path)
    state = read_checkpoint_state(path)
    check_state(state, cfg)
    return cfg, state
