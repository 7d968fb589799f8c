"""The target model resolved in one place for every role: the operator's checks, the trainer's preflight and
build, the reference capture server and the SGLang capture server's layer ids.

``target.model`` is a directory in the pods or a Hugging Face hub id; a hub id is resolved to the local
snapshot of ``target.revision`` (the default branch when unset) once, and every reader (config, tokenizer,
weights) reads that one directory, so all of them see the same revision. The operator cannot read a target's
config; for the targets of :data:`KNOWN_TARGET_LAYERS` it checks the layers with the same rule
(:func:`resolve_layer_ids`), and the trainer refuses a revision whose depth differs from the one the operator
checked. Torch-free; imports huggingface_hub and transformers only when a target has to be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dspark_trainer.assets import BUILTIN_PREFIX
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError, TargetConfig

# num_hidden_layers of the published configs (every revision of these repositories has the same depth).
KNOWN_TARGET_LAYERS: dict[str, int] = {
    "qwen/qwen3-0.6b": 28,
    "qwen/qwen3-1.7b": 28,
    "qwen/qwen3-4b": 36,
    "qwen/qwen3-8b": 36,
    "qwen/qwen3-14b": 40,
    "qwen/qwen3-32b": 64,
    "qwen/qwen3-30b-a3b": 48,
    "qwen/qwen3-235b-a22b": 94,
}

# Files of a hub snapshot no role reads (other weight formats and original, non-transformers checkpoints).
SNAPSHOT_IGNORED = ("*.pth", "*.pt", "*.bin", "*.gguf", "original/*")


def describe_target(target: TargetConfig) -> str:
    """The target as the messages name it: `model` or `model@revision`."""
    return f"{target.model}@{target.revision}" if target.revision else target.model


def known_target_layers(target: TargetConfig) -> int | None:
    """The layer count of a known hub target (case-insensitive id), else None (read from its config instead)."""
    return KNOWN_TARGET_LAYERS.get(target.model.strip().lower())


def is_hub_id(model: str) -> bool:
    """Whether target.model names a hub repository (`owner/name`) rather than a directory in the pods."""
    return not model.startswith(("/", ".", "~", BUILTIN_PREFIX)) and model.count("/") <= 1


def resolve_target_dir(target: TargetConfig) -> str:
    """The local directory holding the target: target.model itself when it is a directory, else the hub snapshot
    of target.model at target.revision (downloaded into the Hugging Face cache on first use; with HF_HUB_OFFLINE=1
    the cache only). ConfigError naming target.model and target.revision when neither works."""
    model = target.model
    if model.startswith(BUILTIN_PREFIX):
        raise ConfigError(f"target.model: {model} is only created by `dspark train --local`")
    if Path(model).is_dir():
        return model
    if not is_hub_id(model):
        raise ConfigError(f"target.model: {model} is neither a directory in the pod nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(repo_id=model, revision=target.revision, ignore_patterns=list(SNAPSHOT_IGNORED)))
    except Exception as exc:  # hub errors, no network, offline without a cached snapshot, bad revision
        at = f"target.revision {target.revision}" if target.revision else "its default branch (target.revision unset)"
        raise ConfigError(
            f"target.model: cannot resolve {model} at {at}: {type(exc).__name__}: {exc}. Check both "
            "(spec.target.model / spec.target.revision), the hub token (spec.target.hfTokenSecretRef) and network "
            "access, or mount the target (spec.target.modelClaimName) and give its directory"
        ) from None


def load_target_config(target: TargetConfig, target_dir: str) -> Any:
    """The target's Hugging Face config, read from its resolved directory."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(target_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"target.model: cannot read the config of {describe_target(target)}: {exc}") from None


def target_num_layers(target: TargetConfig, target_config: Any) -> int:
    """The target's decoder layer count; ConfigError when its config has none usable, or when it differs from the
    known depth the operator checked the layers against."""
    num_layers = int(getattr(target_config, "num_hidden_layers", 0) or 0)
    if num_layers < 2:
        raise ConfigError(f"target.model: {describe_target(target)} has no usable num_hidden_layers ({num_layers})")
    known = known_target_layers(target)
    if known is not None and known != num_layers:
        raise ConfigError(
            f"target.revision: {describe_target(target)} has {num_layers} layers, not the {known} of {target.model}'s "
            "published config that the operator checked draft.targetLayerIds against; pin a revision with "
            f"{known} layers or give the target as a directory"
        )
    return num_layers


def resolve_layer_ids(draft: DraftOptions, num_layers: int) -> list[int]:
    """The configured ids checked against the target's depth, or the default rule (``DraftOptions``); ConfigError
    naming the draft field."""
    try:
        return draft.resolve_target_layer_ids(num_layers)
    except ValueError as exc:
        message = str(exc)
        if not message.startswith("draft."):
            message = f"draft.targetLayerIds: {message}"
        raise ConfigError(message) from None


def target_layer_ids(config: JobConfig, target_dir: str | None = None) -> list[int]:
    """The target layers every role captures or trains on, read from the target's config."""
    directory = target_dir if target_dir is not None else resolve_target_dir(config.target)
    num_layers = target_num_layers(config.target, load_target_config(config.target, directory))
    return resolve_layer_ids(config.draft, num_layers)
