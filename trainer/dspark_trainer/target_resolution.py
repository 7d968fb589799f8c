"""The target model's configuration and the layers to capture, resolved in one place for every role
(trainer preflight, the reference capture server, the SGLang capture server). Imports transformers
only when a target's config has to be read."""

from __future__ import annotations

from typing import Any

from dspark_trainer.assets import BUILTIN_PREFIX
from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError


def load_target_config(config: JobConfig) -> Any:
    """The target's Hugging Face config (a local directory, or the hub at target.revision)."""
    model = config.target.model
    if model.startswith(BUILTIN_PREFIX):
        raise ConfigError(f"target.model: {model} is only created by `dspark train --local`")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model, revision=config.target.revision)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"target.model: cannot read the config of {model}: {exc}") from None


def target_num_layers(config: JobConfig, target_config: Any) -> int:
    """The target's decoder layer count; ConfigError when its config has none usable."""
    num_layers = int(getattr(target_config, "num_hidden_layers", 0) or 0)
    if num_layers < 2:
        raise ConfigError(f"target.model: {config.target.model} has no usable num_hidden_layers ({num_layers})")
    return num_layers


def resolve_layer_ids(config: JobConfig, num_layers: int) -> list[int]:
    """The configured ids checked against the target, or the default rule (``DraftOptions``)."""
    try:
        return config.draft.resolve_target_layer_ids(num_layers)
    except ValueError as exc:
        message = str(exc)
        if not message.startswith("draft."):
            message = f"draft.targetLayerIds: {message}"
        raise ConfigError(message) from None


def target_layer_ids(config: JobConfig) -> list[int]:
    """The target layers every role captures or trains on, read from the target's config."""
    return resolve_layer_ids(config, target_num_layers(config, load_target_config(config)))
