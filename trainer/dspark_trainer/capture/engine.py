"""The reference capture engine on Hugging Face transformers: prefill only, hooks on the listed layers.

For each sequence it returns the outputs of the decoder layers in ``layer_ids`` (``-1`` is the
embedding output, i.e. the input of layer 0; ``i`` is the output of decoder layer ``i``), in
the order given, and the final hidden state AFTER the final norm (the LM head's input). These
are exactly ``hidden_states[i + 1]`` and ``hidden_states[-1]`` of a transformers forward with
``output_hidden_states=True``.

Batching and exactness: sequences are batched only with sequences of the SAME length, stacked
without padding or attention mask (``batch_mode="equal_length"``), or run one by one
(``"per_sample"``). Right-padding with an attention mask changes the numerics (measured: bf16
outputs differ in the last bits), so it is never used. Stacking equal-length sequences gave
bit-identical results to single-sequence forwards with torch 2.11 on CPU in every case tested, but
NOT on an H200 (at T=64 the stacked results differed; at T=2048 they matched): it depends on the
matmul kernels using the same reduction order for every batch size, which no library promises. So
``"auto"`` (the default) is ``per_sample`` on CUDA, exact by construction, and ``equal_length`` on CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

BatchMode = Literal["auto", "equal_length", "per_sample"]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class CapturedStates:
    """The hidden states of one sequence: parts of the aux tensor (one [T, H] per layer id) and the final one."""

    hidden_parts: list[torch.Tensor]
    last_hidden: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.last_hidden.shape[0])

    def hidden(self) -> torch.Tensor:
        """The aux hidden states [T, L*H] (a copy; the transport stages the parts without one)."""
        return torch.cat(self.hidden_parts, dim=-1)


def check_layer_ids(layer_ids: Sequence[int], num_layers: int) -> list[int]:
    """Layer ids must be distinct and in [-1, num_layers - 1]; ValueError naming the problem."""
    ids = [int(i) for i in layer_ids]
    if not ids:
        raise ValueError("layer ids must not be empty")
    if len(set(ids)) != len(ids):
        raise ValueError(f"layer ids must not repeat, got {ids}")
    bad = [i for i in ids if i < -1 or i >= num_layers]
    if bad:
        raise ValueError(
            f"layer ids {bad} out of range for a target with {num_layers} layers (valid: -1 for the embedding "
            f"output, 0..{num_layers - 1} for the output of that decoder layer)"
        )
    return ids


def _decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The base decoder module and its list of layers (Qwen/Llama-style `model.layers`)."""
    base = model
    for _ in range(3):
        layers = getattr(base, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return base, layers
        nxt = getattr(base, "model", None) or getattr(base, "language_model", None)
        if nxt is None:
            break
        base = nxt
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (expected a `layers` ModuleList)")


class CaptureEngine:
    """Loads a target from a local directory and captures hidden states of token sequences."""

    def __init__(
        self,
        model: str | Path | nn.Module,
        layer_ids: Sequence[int] | None = None,
        *,
        dtype: str = "bfloat16",
        device: str = "cpu",
        max_seq_len: int | None = None,
        batch_mode: BatchMode = "auto",
        num_layer_ids: int = 5,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if batch_mode not in ("auto", "equal_length", "per_sample"):
            raise ValueError(f"batch_mode must be auto, equal_length or per_sample, got {batch_mode!r}")
        self.torch_dtype = DTYPES[dtype]
        self.device = torch.device(device)
        if batch_mode == "auto":
            batch_mode = "per_sample" if self.device.type == "cuda" else "equal_length"
        self.batch_mode: BatchMode = batch_mode
        if isinstance(model, nn.Module):
            module = model
            self.model_path = type(model).__name__
        else:
            path = Path(model)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
            from transformers import AutoModel

            self.model_path = str(path)
            module = AutoModel.from_pretrained(str(path), dtype=self.torch_dtype)
        # Only move: casting with .to(dtype) would also cast float32 buffers such as RoPE's inv_freq, which
        # from_pretrained(dtype=...) keeps in float32, and the results would no longer match transformers.
        module = module.to(device=self.device).eval()
        self.torch_dtype = next(module.parameters()).dtype
        module.requires_grad_(False)
        self.base, self.layers = _decoder_parts(module)
        self.config: Any = getattr(self.base, "config", None) or module.config
        self.num_layers = len(self.layers)
        config: Any = self.config
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        if layer_ids is None:
            from dspark_trainer.config.draft import default_target_layer_ids

            layer_ids = default_target_layer_ids(self.num_layers, num_layer_ids)
        self.layer_ids = check_layer_ids(layer_ids, self.num_layers)
        model_max = int(getattr(self.config, "max_position_embeddings", 0) or 0)
        self.max_seq_len = int(max_seq_len or model_max or 4096)
        if model_max and self.max_seq_len > model_max:
            raise ValueError(f"max_seq_len {self.max_seq_len} exceeds the model's max_position_embeddings {model_max}")
        self._captured: dict[int, torch.Tensor] = {}
        self._hooks: list[Any] = []
        self._lock = threading.Lock()
        self._install_hooks()

    # ------------------------------------------------------------------ hooks
    def _install_hooks(self) -> None:
        wanted = set(self.layer_ids)
        if -1 in wanted:

            def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                self._captured[-1] = args[0] if args else kwargs["hidden_states"]

            self._hooks.append(self.layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for i in sorted(wanted - {-1}):

            def hook(_mod: nn.Module, _args: Any, output: Any, i: int = i) -> None:
                self._captured[i] = output[0] if isinstance(output, tuple) else output

            self._hooks.append(self.layers[i].register_forward_hook(hook))

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ------------------------------------------------------------------ validation
    def validate(self, input_ids: object) -> str | None:
        """A message naming the problem with a request's token ids, or None when they are fine."""
        if not isinstance(input_ids, list):
            return f"input_ids must be a list of token ids, got {type(input_ids).__name__}"
        if not input_ids:
            return "input_ids is empty: a capture needs at least one token"
        if len(input_ids) > self.max_seq_len:
            return (
                f"input_ids has {len(input_ids)} tokens, more than this server's limit of {self.max_seq_len} "
                "(--max-seq-len)"
            )
        for i, t in enumerate(input_ids):
            if not isinstance(t, int) or isinstance(t, bool):
                return f"input_ids[{i}] = {t!r} is not an integer token id"
            if not 0 <= t < self.vocab_size:
                return (
                    f"input_ids[{i}] = {t} is out of range for the target's vocab size {self.vocab_size} "
                    f"(0..{self.vocab_size - 1})"
                )
        return None

    # ------------------------------------------------------------------ forward
    def groups(self, sequences: Sequence[Sequence[int]]) -> list[list[int]]:
        """Indices of `sequences` run together in one forward."""
        if self.batch_mode == "per_sample":
            return [[i] for i in range(len(sequences))]
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(sequences):
            by_len[len(s)].append(i)
        return list(by_len.values())

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        with self._lock:
            self._captured = {}
            try:
                out = self.base(input_ids=ids, use_cache=False)
                last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                captured = self._captured
            finally:
                self._captured = {}
        missing = [i for i in self.layer_ids if i not in captured]
        if missing:
            raise RuntimeError(f"the forward pass did not reach layers {missing}")
        return captured, last

    def capture(self, sequences: Sequence[Sequence[int]]) -> list[CapturedStates]:
        """Hidden states for each sequence, in order. Sequences must already be validated."""
        results: list[CapturedStates | None] = [None] * len(sequences)
        for group in self.groups(sequences):
            ids = torch.tensor([list(sequences[i]) for i in group], dtype=torch.long, device=self.device)
            captured, last = self._forward(ids)
            for row, i in enumerate(group):
                results[i] = CapturedStates(
                    hidden_parts=[captured[lid][row] for lid in self.layer_ids],
                    last_hidden=last[row],
                )
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def bare_forward(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """The same forward passes without capture (hooks off): the baseline of the overhead benchmark."""
        hooks, self._hooks = self._hooks, []
        for h in hooks:
            h.remove()
        try:
            outs: list[torch.Tensor] = []
            for group in self.groups(sequences):
                ids = torch.tensor([list(sequences[i]) for i in group], dtype=torch.long, device=self.device)
                outs.append(self.base(input_ids=ids, use_cache=False).last_hidden_state)
            return outs
        finally:
            self._install_hooks()

    def warmup(self) -> float:
        """One tiny forward (also what /health_generate runs); returns its seconds."""
        t0 = time.perf_counter()
        self.capture([[0]])
        return time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_path,
            "layer_ids": self.layer_ids,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "max_seq_len": self.max_seq_len,
            "dtype": str(self.torch_dtype).removeprefix("torch."),
            "device": str(self.device),
            "batch_mode": self.batch_mode,
        }
