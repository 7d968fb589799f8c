"""The query layout of a draft block: which rows the serving engine runs and which ones predict.

Both engines' drafts read a block of mask-token queries after the anchor ``a`` (the last verified
token), attend the target's context before ``a`` and the whole block (non-causal), and draft ``K``
tokens ``a+1 .. a+K``. They differ in where the predictions come from:

* DSpark (``markov_rank > 0``, SGLang ``DSPARK`` / vLLM ``dspark`` with ``sample_from_anchor``): ``K``
  query rows ``[x_a, mask, ..., mask]`` at positions ``a .. a+K-1``; row ``j`` predicts ``x_{a+j+1}``
  (the anchor row predicts too). The checkpoint's ``block_size`` is ``K``.
* DFlash (``markov_rank == 0``, SGLang ``DFLASH`` / vLLM ``dflash``): ``K + 1`` rows ``[x_a, mask * K]``
  at positions ``a .. a+K``; the anchor row is dropped and row ``j >= 1`` predicts ``x_{a+j}``. The
  checkpoint's ``block_size`` counts every row: ``K + 1``.

The draft trains in the layout its serving algorithm runs, so an export serves exactly as trained.
"""

from __future__ import annotations

from dspark_trainer.model.config import DSparkModelConfig


def samples_from_anchor(cfg: DSparkModelConfig) -> bool:
    """True for the DSpark layout (the anchor row predicts), False for DFlash's (it is dropped)."""
    return cfg.markov_rank > 0


def query_rows(cfg: DSparkModelConfig) -> int:
    """Rows of one block the draft runs: ``K`` (DSpark) or ``K + 1`` (DFlash)."""
    return cfg.block_size if samples_from_anchor(cfg) else cfg.block_size + 1


def dropped_rows(cfg: DSparkModelConfig) -> int:
    """Leading rows of each block that predict nothing: 0 (DSpark) or 1 (DFlash's anchor row)."""
    return query_rows(cfg) - cfg.block_size
