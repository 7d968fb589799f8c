"""DSpark loss, metrics and the chunked vocabulary path."""

from dspark_trainer.loss.dspark_loss import TERMS, LossOutput, LossWeights, dspark_loss
from dspark_trainer.loss.metrics import DSparkMetrics, accumulate_stats, all_reduce_stats, summarize
from dspark_trainer.loss.vocab import (
    FusedVocabLoss,
    VocabRows,
    VocabTerms,
    draft_logits,
    target_probs,
    vocab_loss_fused,
    vocab_terms,
    vocab_terms_chunked,
    vocab_terms_reference,
)
from dspark_trainer.loss.weights import decay_weights, global_denominator, local_denominator, position_weights

__all__ = [
    "TERMS",
    "DSparkMetrics",
    "FusedVocabLoss",
    "LossOutput",
    "LossWeights",
    "VocabRows",
    "VocabTerms",
    "accumulate_stats",
    "all_reduce_stats",
    "decay_weights",
    "draft_logits",
    "dspark_loss",
    "global_denominator",
    "local_denominator",
    "position_weights",
    "summarize",
    "target_probs",
    "vocab_loss_fused",
    "vocab_terms",
    "vocab_terms_chunked",
    "vocab_terms_reference",
]
