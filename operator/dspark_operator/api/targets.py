"""Targets whose depth the operator knows without reading their config, so `draft.targetLayerIds` can be checked
before anything starts. For any other target the trainer checks them when it loads the target's config (and fails
the job, without gang restarts, when they do not fit)."""

from __future__ import annotations

# num_hidden_layers of the published configs.
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


def known_target_layers(model: str) -> int | None:
    """The layer count of a known hub target (case-insensitive id), else None."""
    return KNOWN_TARGET_LAYERS.get(model.strip().lower())
