"""The DSpark draft model: configuration, layers, heads, masks, anchors, checkpoint format, public API."""

from dspark_trainer.model.anchors import (
    anchor_candidates,
    block_tokens,
    draft_positions,
    eval_mask,
    label_indices,
    noise_input_ids,
    position_weights,
    sample_anchors,
)
from dspark_trainer.model.api import (
    build_draft_model,
    draft_config_of,
    evaluate_batch,
    export_draft,
    load_draft,
    load_trainable_weights,
)
from dspark_trainer.model.checkpoint import (
    expected_weight_shapes,
    export_checkpoint,
    import_checkpoint,
    read_checkpoint_config,
    read_checkpoint_state,
)
from dspark_trainer.model.config import (
    DSparkModelConfig,
    default_mask_token_id,
    read_target_config,
    resolve_model_config,
    resolve_model_config_from_dir,
)
from dspark_trainer.model.draft import DraftOutput, DSparkDraftModel
from dspark_trainer.model.masks import build_attention_mask, dense_mask, dspark_mask_mod, flex_block_mask
from dspark_trainer.model.target_weights import load_vocab_weights

__all__ = [
    "DSparkDraftModel",
    "DSparkModelConfig",
    "DraftOutput",
    "anchor_candidates",
    "block_tokens",
    "build_attention_mask",
    "build_draft_model",
    "default_mask_token_id",
    "dense_mask",
    "draft_config_of",
    "draft_positions",
    "dspark_mask_mod",
    "eval_mask",
    "evaluate_batch",
    "expected_weight_shapes",
    "export_checkpoint",
    "export_draft",
    "flex_block_mask",
    "import_checkpoint",
    "label_indices",
    "load_draft",
    "load_trainable_weights",
    "load_vocab_weights",
    "noise_input_ids",
    "position_weights",
    "read_checkpoint_config",
    "read_checkpoint_state",
    "read_target_config",
    "resolve_model_config",
    "resolve_model_config_from_dir",
    "sample_anchors",
]
