"""The resolved DSpark model configuration: the user's ``DraftOptions`` plus the target's sizes.

``resolve_model_config`` combines a target's Hugging Face ``config.json`` (a Qwen3, Qwen2/Qwen2.5 or
Llama-family config; the draft is always a Qwen3-style stack with the target's sizes) with ``DraftOptions``;
``DSparkModelConfig.to_checkpoint_config`` / ``from_checkpoint_config`` convert to and from the ``config.json``
of an exported DSpark draft (docs/model.md, "Export, import, inspection").
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from dspark_trainer.config.draft import (
    QWEN3_MASK_TOKEN_ID,
    DraftOptions,
    DraftSettings,
    MarkovHeadType,
    check_target_layer_ids,
)

ARCHITECTURE = "Qwen3DSparkModel"

# Target model types the draft can be built for. Only the target's sizes, RoPE base, embedding and LM head
# are used: the draft never copies a target layer, so q/k norms or attention biases of the target do not matter.
SUPPORTED_TARGET_TYPES = ("qwen3", "qwen2", "llama")

# Keys the export writes (or removes) on top of the target's config; everything else is the target's.
DSPARK_KEYS = (
    "architectures",
    "num_hidden_layers",
    "num_target_layers",
    "block_size",
    "mask_token_id",
    "target_layer_ids",
    "num_anchors",
    "tie_word_embeddings",
    "markov_rank",
    "markov_head_type",
    "enable_confidence_head",
    "confidence_head_with_markov",
    "dflash_config",
    "layer_types",
    "loss_decay_gamma",
    "ce_loss_alpha",
    "l1_loss_alpha",
    "confidence_head_alpha",
    "dtype",
    "torch_dtype",
)
# Keys of the target's config that must not reach a draft's config.json.
DROPPED_TARGET_KEYS = ("speculators_model_type", "speculators_config", "auto_map", "quantization_config")


class DSparkModelConfig(DraftSettings):
    """Everything needed to build a DSpark draft: the draft settings, resolved layer ids and mask token, and the
    target's sizes."""

    model_config = ConfigDict(frozen=True)

    # Backbone sizes (the target's).
    hidden_size: int = Field(..., ge=1)
    intermediate_size: int = Field(..., ge=1)
    num_attention_heads: int = Field(..., ge=1)
    num_key_value_heads: int = Field(..., ge=1)
    head_dim: int = Field(..., ge=2)
    vocab_size: int = Field(..., ge=2)
    rope_theta: float = Field(..., gt=0)
    rms_norm_eps: float = Field(1e-6, gt=0)
    attention_bias: bool = False
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    # Resolved against the target.
    num_target_layers: int = Field(..., ge=1, description="Layers of the target model.")
    target_layer_ids: list[int]
    mask_token_id: int = Field(..., ge=0)
    # The target's Hugging Face config (minus DSpark keys): the base of the exported config.json.
    base_config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> DSparkModelConfig:
        check_target_layer_ids(self.target_layer_ids, self.num_target_layers)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.mask_token_id >= self.vocab_size:
            raise ValueError(
                f"draft.maskTokenId: {self.mask_token_id} does not fit the target's vocabulary of {self.vocab_size}"
            )
        return self

    @property
    def num_captured_layers(self) -> int:
        """L: how many target layers feed the draft (``target_hidden`` has ``L * hidden_size`` features)."""
        return len(self.target_layer_ids)

    @property
    def confidence_input_size(self) -> int:
        return self.hidden_size + (self.markov_rank if self.confidence_head_with_markov else 0)

    @property
    def needs_target_logits(self) -> bool:
        """Whether the loss needs ``target_last_hidden`` (the L1 or confidence term has weight > 0)."""
        return self.l1_alpha > 0 or (self.enable_confidence_head and self.confidence_alpha > 0)

    def with_updates(self, **changes: Any) -> DSparkModelConfig:
        """A validated copy with some fields changed."""
        data = self.model_dump()
        data.update(changes)
        return DSparkModelConfig.model_validate(data)

    def to_checkpoint_config(self, dtype: str = "float32") -> dict[str, Any]:
        """The ``config.json`` of an exported draft: the target's Qwen3 config with the DSpark fields.

        SGLang reads ``target_layer_ids``, ``mask_token_id`` and ``block_size`` from ``dflash_config``;
        they are written there and at the top level. ``speculators_model_type`` is never written.
        """
        cfg = copy.deepcopy(self.base_config)
        for key in (*DSPARK_KEYS, *DROPPED_TARGET_KEYS):
            cfg.pop(key, None)
        cfg.update(
            {
                "model_type": "qwen3",
                "architectures": [ARCHITECTURE],
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "vocab_size": self.vocab_size,
                "rms_norm_eps": self.rms_norm_eps,
                "rope_theta": self.rope_theta,
                "attention_bias": self.attention_bias,
                "hidden_act": "silu",
                "max_position_embeddings": self.max_position_embeddings,
                "initializer_range": self.initializer_range,
                "num_hidden_layers": self.num_draft_layers,
                "num_target_layers": self.num_target_layers,
                "layer_types": ["full_attention"] * self.num_draft_layers,
                "block_size": self.block_size,
                "mask_token_id": self.mask_token_id,
                "target_layer_ids": list(self.target_layer_ids),
                "num_anchors": self.num_anchors,
                "tie_word_embeddings": False,
                "markov_rank": self.markov_rank,
                "markov_head_type": str(self.markov_head_type),
                "enable_confidence_head": self.enable_confidence_head,
                "confidence_head_with_markov": self.confidence_head_with_markov,
                "dflash_config": {
                    "target_layer_ids": list(self.target_layer_ids),
                    "mask_token_id": self.mask_token_id,
                    "block_size": self.block_size,
                },
                "loss_decay_gamma": self.gamma,
                "ce_loss_alpha": self.ce_alpha,
                "l1_loss_alpha": self.l1_alpha,
                "confidence_head_alpha": self.confidence_alpha,
                "dtype": dtype,
                "torch_dtype": dtype,
            }
        )
        return dict(sorted(cfg.items()))

    @classmethod
    def from_checkpoint_config(cls, cfg: dict[str, Any]) -> DSparkModelConfig:
        """Read the ``config.json`` of a DSpark draft directory."""
        if cfg.get("speculators_model_type") is not None:
            raise ValueError(
                "this is a speculators-format checkpoint (slot j predicts anchor+j); only the DSpark format "
                "(architectures Qwen3DSparkModel) is supported"
            )
        missing = [k for k in ("num_target_layers", "block_size", "mask_token_id", "target_layer_ids") if k not in cfg
                   and k not in (cfg.get("dflash_config") or {})]
        if missing:
            raise ValueError(f"not a DSpark draft config: missing {missing}")
        sub = cfg.get("dflash_config") or {}

        def pick(key: str) -> Any:
            value = cfg.get(key, sub.get(key))
            if value is None:
                raise ValueError(f"not a DSpark draft config: {key} is null")
            return value

        sizes = _backbone_sizes(cfg)
        base = {k: v for k, v in cfg.items() if k not in DSPARK_KEYS}
        return cls(
            **sizes,
            num_target_layers=int(cfg["num_target_layers"]),
            num_draft_layers=int(cfg["num_hidden_layers"]),
            target_layer_ids=[int(i) for i in pick("target_layer_ids")],
            block_size=int(pick("block_size")),
            mask_token_id=int(pick("mask_token_id")),
            num_anchors=int(cfg.get("num_anchors", _default("num_anchors"))),
            markov_rank=int(cfg.get("markov_rank", 0) or 0),
            markov_head_type=MarkovHeadType(str(cfg.get("markov_head_type", "vanilla")).lower()),
            enable_confidence_head=bool(cfg.get("enable_confidence_head", False)),
            confidence_head_with_markov=bool(cfg.get("confidence_head_with_markov", False)),
            gamma=float(cfg.get("loss_decay_gamma", _default("gamma"))),
            ce_alpha=float(cfg.get("ce_loss_alpha", _default("ce_alpha"))),
            l1_alpha=float(cfg.get("l1_loss_alpha", _default("l1_alpha"))),
            confidence_alpha=float(cfg.get("confidence_head_alpha", 1.0 if cfg.get("enable_confidence_head") else 0.0)),
            base_config=base,
        )


def _default(name: str) -> Any:
    """The default of a ``DraftSettings`` field (for a checkpoint config without the key)."""
    return DraftSettings.model_fields[name].default


def _rope_theta(cfg: dict[str, Any]) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(
            f"the target uses rope type {rope_type!r}; the DSpark draft supports only the default rotary embedding"
        )
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    return float(theta)


def _backbone_sizes(cfg: dict[str, Any]) -> dict[str, Any]:
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "num_hidden_layers"):
        if key not in cfg:
            raise ValueError(f"the target config has no {key!r}")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"the target uses hidden_act {act!r}; the Qwen3 draft backbone needs 'silu'")
    heads = int(cfg["num_attention_heads"])
    return {
        "hidden_size": int(cfg["hidden_size"]),
        "intermediate_size": int(cfg["intermediate_size"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(cfg.get("num_key_value_heads") or heads),
        "head_dim": int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
        "vocab_size": int(cfg["vocab_size"]),
        "rope_theta": _rope_theta(cfg),
        "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "attention_bias": bool(cfg.get("attention_bias", False)),
        "max_position_embeddings": int(cfg.get("max_position_embeddings", 32768)),
        "initializer_range": float(cfg.get("initializer_range", 0.02)),
    }


def read_target_config(target_dir: str | Path) -> dict[str, Any]:
    """The target's ``config.json`` as a dict."""
    path = Path(target_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the target directory needs a Hugging Face config.json")
    cfg: dict[str, Any] = json.loads(path.read_text())
    return cfg


def tokenizer_size(target_dir: str | Path) -> int | None:
    """1 + the largest token id of ``tokenizer.json`` in ``target_dir`` (vocabulary and added tokens), if any."""
    path = Path(target_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    ids: list[int] = [int(t["id"]) for t in data.get("added_tokens", [])]
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        ids.extend(int(i) for i in vocab.values())
    elif isinstance(vocab, list):  # unigram: a list of [piece, score]
        ids.append(len(vocab) - 1)
    return max(ids) + 1 if ids else None


@dataclass(frozen=True)
class TokenizerInfo:
    """What the mask-token rule reads from a target's tokenizer files."""

    size: int | None = None  # 1 + the largest token id (vocabulary and added tokens)
    mask_token_id: int | None = None  # the tokenizer's own mask token, if it declares one
    special_tokens: tuple[tuple[int, str], ...] = ()  # added special tokens: (id, content), by id
    role_tokens: frozenset[str] = frozenset()  # bos/eos/pad/unk contents (never used as the mask)
    chat_template: str = ""


def read_tokenizer_info(target_dir: str | Path) -> TokenizerInfo:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` of ``target_dir`` (missing: empty)."""
    root = Path(target_dir)
    data: dict[str, Any] = {}
    if (root / "tokenizer.json").is_file():
        data = json.loads((root / "tokenizer.json").read_text())
    tcfg: dict[str, Any] = {}
    if (root / "tokenizer_config.json").is_file():
        tcfg = json.loads((root / "tokenizer_config.json").read_text())
    added = [(int(t["id"]), str(t["content"])) for t in data.get("added_tokens", []) if t.get("special")]

    def content(value: Any) -> str | None:
        return str(value.get("content")) if isinstance(value, dict) else (None if value is None else str(value))

    roles = frozenset(c for c in (content(tcfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token"))
                      if c)
    mask_name = content(tcfg.get("mask_token"))
    mask_id = next((i for i, c in added if mask_name is not None and c == mask_name), None)
    template = tcfg.get("chat_template") or ""
    if (root / "chat_template.jinja").is_file():
        template = (root / "chat_template.jinja").read_text()
    return TokenizerInfo(size=tokenizer_size(root), mask_token_id=mask_id, special_tokens=tuple(sorted(added)),
                         role_tokens=roles, chat_template=str(template) if isinstance(template, str) else "")


def default_mask_token_id(
    target_config: dict[str, Any], tokenizer_len: int | None = None, tokenizer: TokenizerInfo | None = None
) -> int:
    """The draft's mask token id for a target, by the first rule that applies:

    1. the target config's ``mask_token_id``;
    2. the tokenizer's own mask token;
    3. the first id after the tokenizer's vocabulary, when it is an embedding row no text token uses
       (Qwen3: 151669; Qwen2.5: 151665 for a 151936-row embedding);
    4. 151669 for a Qwen3 vocabulary;
    5. when the tokenizer fills the embedding (Llama 3, SmolLM2): the added special token with the
       highest id that is none of bos/eos/pad/unk and does not occur in the chat template (Llama 3:
       ``<|reserved_special_token_247|>``, SmolLM2: ``<empty_output>``): a row chat text never uses.
    """
    vocab_size = int(target_config["vocab_size"])
    if target_config.get("mask_token_id") is not None:
        return int(target_config["mask_token_id"])
    if tokenizer is not None and tokenizer.mask_token_id is not None and tokenizer.mask_token_id < vocab_size:
        return tokenizer.mask_token_id
    if tokenizer_len is None and tokenizer is not None:
        tokenizer_len = tokenizer.size
    if tokenizer_len is not None and tokenizer_len < vocab_size:
        return int(tokenizer_len)
    if target_config.get("model_type") == "qwen3" and vocab_size > QWEN3_MASK_TOKEN_ID:
        return QWEN3_MASK_TOKEN_ID
    if tokenizer is not None:
        unused = [i for i, c in tokenizer.special_tokens
                  if i < vocab_size and c not in tokenizer.role_tokens and c not in tokenizer.chat_template]
        if unused:
            return unused[-1]
    raise ValueError(
        "draft.maskTokenId: cannot derive a mask token id from the target (its config has no mask_token_id, "
        f"its tokenizer fills the vocabulary of {vocab_size} and has no unused special token); set draft.maskTokenId"
    )


def resolve_model_config(
    target_config: dict[str, Any],
    options: DraftOptions,
    *,
    tokenizer_len: int | None = None,
    target_layer_ids: list[int] | None = None,
    tokenizer: TokenizerInfo | None = None,
) -> DSparkModelConfig:
    """Combine the target's Hugging Face config with the draft options; raises ValueError with the field named."""
    model_type = target_config.get("model_type")
    if model_type not in SUPPORTED_TARGET_TYPES:
        raise ValueError(
            f"target: model_type {model_type!r} is not supported; the DSpark draft needs a "
            f"{', '.join(SUPPORTED_TARGET_TYPES)} target"
        )
    sizes = _backbone_sizes(target_config)
    num_layers = int(target_config["num_hidden_layers"])
    if target_layer_ids is not None:
        ids = list(target_layer_ids)
        check_target_layer_ids(ids, num_layers)
    else:
        ids = options.resolve_target_layer_ids(num_layers)
    mask = options.mask_token_id
    if mask is None:
        mask = default_mask_token_id(target_config, tokenizer_len, tokenizer)
    base = {k: v for k, v in target_config.items() if k not in DSPARK_KEYS and k not in DROPPED_TARGET_KEYS}
    settings = options.model_dump(include=set(DraftSettings.model_fields))
    settings["confidence_head_with_markov"] = options.confidence_head_with_markov and options.enable_confidence_head
    return DSparkModelConfig(
        **sizes, **settings, num_target_layers=num_layers, target_layer_ids=ids, mask_token_id=mask, base_config=base
    )


def resolve_model_config_from_dir(
    target_dir: str | Path, options: DraftOptions, *, target_layer_ids: list[int] | None = None
) -> DSparkModelConfig:
    """``resolve_model_config`` for a target directory (its config.json and, for the mask id, its tokenizer files)."""
    info = read_tokenizer_info(target_dir)
    return resolve_model_config(
        read_target_config(target_dir), options, tokenizer_len=info.size, target_layer_ids=target_layer_ids,
        tokenizer=info,
    )
