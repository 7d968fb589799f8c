"""Read the target's ``embed_tokens`` and ``lm_head`` from its checkpoint directory, and nothing else.

Only the safetensors files holding those two tensors are opened (``model.safetensors.index.json``
maps names to shards), and only those tensors are read from them (``safe_open(...).get_tensor``).
Names with and without the ``model.`` prefix are accepted. A target with tied embeddings (no
``lm_head.weight``, or ``tie_word_embeddings: true``) uses its embedding as the LM head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

EMBED_KEYS = ("model.embed_tokens.weight", "embed_tokens.weight", "model.language_model.embed_tokens.weight")
LM_HEAD_KEYS = ("lm_head.weight", "model.lm_head.weight")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def tensor_locations(target_dir: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (from the shard index, or the single file's header)."""
    root = Path(target_dir)
    index = root / INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return {name: root / fname for name, fname in weight_map.items()}
    single = root / SINGLE_FILE
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}  # noqa: SIM118 - safe_open handles have no __iter__
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{root}: no {INDEX_FILE}, {SINGLE_FILE} or *.safetensors (a target checkpoint)")
    out: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            out.update({name: path for name in f.keys()})  # noqa: SIM118
    return out


def _read(locations: dict[str, Path], name: str) -> torch.Tensor:
    with safe_open(str(locations[name]), framework="pt") as f:
        tensor: torch.Tensor = f.get_tensor(name)
    return tensor


def load_vocab_weights(
    target_dir: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embed_tokens [V, H], lm_head [V, H])`` of the target in ``target_dir``."""
    root = Path(target_dir)
    locations = tensor_locations(root)
    embed_key = next((k for k in EMBED_KEYS if k in locations), None)
    if embed_key is None:
        raise KeyError(f"{root}: the checkpoint has no embedding tensor (looked for {', '.join(EMBED_KEYS)})")
    embed = _read(locations, embed_key)
    tied = False
    cfg_path = root / "config.json"
    if cfg_path.is_file():
        tied = bool(json.loads(cfg_path.read_text()).get("tie_word_embeddings", False))
    head_key = next((k for k in LM_HEAD_KEYS if k in locations), None)
    head = embed if (tied or head_key is None) else _read(locations, head_key)
    if head.shape != embed.shape:
        raise ValueError(f"{root}: lm_head {tuple(head.shape)} and embed_tokens {tuple(embed.shape)} differ in shape")
    if dtype is not None:
        embed, head = embed.to(dtype), head.to(dtype)
    if device is not None:
        embed, head = embed.to(device), head.to(device)
    if head is embed:
        head = embed.clone()
    return embed, head
