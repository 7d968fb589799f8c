"""Batched decoding: the target alone (the baseline) and speculative decoding with a DSpark draft.

Both take prompts as token ids and return, per prompt, the generated ids (ending at the first stop token,
included, or at ``max_new_tokens``). Rows that finish leave the batch. At temperature 0 the speculative
output is the target's own greedy output (``sampling.verify_greedy``); at temperature > 0 both sample from
the target's distribution (``sampling.verify_rejection``).

Statistics of speculative decoding, per round and row: ``committed`` tokens (accepted drafts + the
correction/bonus token; a stop token among the accepted drafts ends the round there), the proposal length,
and for the confidence head the prefix predictions ``prod_{i<=j} sigmoid(conf_i)`` with their labels
(drafts ``0..j`` all accepted), over the proposed slots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dspark_trainer.eval.drafter import DraftRunner
from dspark_trainer.eval.sampling import choose, probabilities, verify_greedy, verify_rejection
from dspark_trainer.eval.target import TargetRunner
from dspark_trainer.model.draft import DSparkDraftModel

Progress = Callable[[int], None]  # called with the number of prompts that just finished


@dataclass
class SpecStats:
    """Sum-reducible counts of speculative rounds."""

    block_size: int
    rounds: int = 0
    committed: int = 0
    proposed: int = 0
    proposed_beyond: list[int] = field(default_factory=list)  # rounds that proposed more than k drafts
    accepted_beyond: list[int] = field(default_factory=list)  # rounds that accepted more than k drafts
    conf_pred: list[list[float]] = field(default_factory=list)
    conf_label: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = self.block_size
        self.proposed_beyond = self.proposed_beyond or [0] * k
        self.accepted_beyond = self.accepted_beyond or [0] * k
        self.conf_pred = self.conf_pred or [[] for _ in range(k)]
        self.conf_label = self.conf_label or [[] for _ in range(k)]

    @property
    def tau(self) -> float:
        """Mean tokens per round (accepted drafts + 1)."""
        return self.committed / self.rounds if self.rounds else 0.0

    @property
    def accept_rate(self) -> list[float]:
        """Per position k: rounds that accepted more than k drafts / rounds that proposed more than k."""
        return [a / p if p else 0.0 for a, p in zip(self.accepted_beyond, self.proposed_beyond, strict=True)]

    @property
    def mean_proposal(self) -> float:
        return self.proposed / self.rounds if self.rounds else 0.0

    def add(self, proposed: int, accepted: int, committed: int, prefix_conf: list[float] | None) -> None:
        self.rounds += 1
        self.committed += committed
        self.proposed += proposed
        for k in range(proposed):
            self.proposed_beyond[k] += 1
            if accepted > k:
                self.accepted_beyond[k] += 1
        if prefix_conf is not None:
            for j in range(proposed):
                self.conf_pred[j].append(prefix_conf[j])
                self.conf_label[j].append(1.0 if accepted > j else 0.0)


@dataclass
class DecodeResult:
    """Generated ids per prompt, wall time, and (speculative decoding) the round statistics."""

    outputs: list[list[int]]
    seconds: float
    stats: SpecStats | None = None

    @property
    def generated_tokens(self) -> int:
        return sum(len(o) for o in self.outputs)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _left_padded(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        valid[b, width - len(p):] = True
    pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), pos.to(device), valid.to(device)


class _Rows:
    """Host-side state of the rows still decoding: their prompt index, generated ids and fed length."""

    def __init__(self, prompts: Sequence[Sequence[int]], stop_ids: set[int], max_new: int) -> None:
        self.index = list(range(len(prompts)))
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.fed = [len(p) for p in prompts]  # positions whose tokens the target has seen (and kept)
        self.stop_ids = stop_ids
        self.max_new = max_new

    def commit(self, row: int, tokens: list[int]) -> tuple[int, bool]:
        """Append ``tokens`` to row ``row`` (a slot of the live batch); returns (tokens kept, finished)."""
        out = self.generated[self.index[row]]
        kept = 0
        for t in tokens:
            out.append(t)
            kept += 1
            if t in self.stop_ids:
                return kept, True
        return kept, len(out) >= self.max_new


def _finish(rows: _Rows, done: list[bool], runners: Sequence[Any], state: list[torch.Tensor],
            progress: Progress | None) -> list[torch.Tensor]:
    """Drop finished rows from every runner and state tensor; returns the state tensors for the rows left."""
    if not any(done):
        return state
    keep = [i for i, d in enumerate(done) if not d]
    if progress is not None:
        progress(len(done) - len(keep))
    rows.index = [rows.index[i] for i in keep]
    rows.fed = [rows.fed[i] for i in keep]
    if not keep:
        return [s[:0] for s in state]
    sel = torch.tensor(keep, dtype=torch.long, device=state[0].device)
    for r in runners:
        r.select(sel)
    return [s[sel] for s in state]


def _truncate(outputs: list[list[int]], max_new: int) -> list[list[int]]:
    return [o[:max_new] for o in outputs]


@torch.no_grad()
def target_generate(
    model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float,
    stop_ids: set[int], generator: torch.Generator | None = None, progress: Progress | None = None,
) -> DecodeResult:
    """Decode with the target alone, one token per step (KV cache), all prompts as one batch."""
    device = next(model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    runner = TargetRunner(model, None)
    ids, pos, valid = _left_padded(prompts, device)
    logits, _ = runner.forward(ids, pos, valid, need_hidden=False)
    rows = _Rows(prompts, stop_ids, max_new_tokens)
    nxt = choose(logits[:, -1], temperature, generator)
    while True:
        done = [rows.commit(b, [t])[1] for b, t in enumerate(nxt.tolist())]
        (nxt,) = _finish(rows, done, [runner], [nxt], progress)
        if not rows.index:
            break
        step_pos = torch.tensor(rows.fed, device=device).unsqueeze(1)
        logits, _ = runner.forward(nxt.unsqueeze(1), step_pos, torch.ones_like(step_pos, dtype=torch.bool), False)
        rows.fed = [f + 1 for f in rows.fed]
        nxt = choose(logits[:, -1], temperature, generator)
    _sync(device)
    return DecodeResult(_truncate(rows.generated, max_new_tokens), time.perf_counter() - start)


@torch.no_grad()
def speculative_generate(
    model: Any, draft: DSparkDraftModel, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
    temperature: float, stop_ids: set[int], confidence_threshold: float = 0.0,
    generator: torch.Generator | None = None, progress: Progress | None = None,
) -> DecodeResult:
    """Speculative decoding of all prompts as one batch: per round the draft proposes ``block_size`` tokens
    (fewer with ``confidence_threshold`` > 0: the proposal stops before the first slot whose confidence is
    below it) and the target verifies them in one forward pass."""
    cfg = draft.config
    k = cfg.block_size
    device = next(model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    target = TargetRunner(model, list(cfg.target_layer_ids))
    drafter = DraftRunner(draft)
    ids, pos, valid = _left_padded(prompts, device)
    logits, hidden = target.forward(ids, pos, valid, need_hidden=True)
    assert hidden is not None
    drafter.append_context(hidden, pos, valid)
    rows = _Rows(prompts, stop_ids, max_new_tokens)
    stats = SpecStats(block_size=k)
    anchor = choose(logits[:, -1], temperature, generator)
    done = [rows.commit(b, [t])[1] for b, t in enumerate(anchor.tolist())]
    (anchor,) = _finish(rows, done, [target, drafter], [anchor], progress)
    offsets = torch.arange(k + 1, device=device)

    def pick(_j: int, logit: torch.Tensor) -> torch.Tensor:
        return choose(logit, temperature, generator)

    while rows.index:
        anchor_pos = torch.tensor(rows.fed, device=device)
        prop = drafter.propose(anchor, anchor_pos, pick)
        bsz = anchor.shape[0]
        proposal_len = torch.full((bsz,), k, dtype=torch.long, device=device)
        prefix = None
        if prop.conf_logits is not None:
            conf = torch.sigmoid(prop.conf_logits)
            prefix = conf.cumprod(dim=1).tolist()
            if confidence_threshold > 0:
                low = conf < confidence_threshold
                first_low = torch.where(low.any(dim=1), low.float().argmax(dim=1), proposal_len)
                proposal_len = first_low.long()
        verify_in = torch.cat([anchor.unsqueeze(1), prop.tokens], dim=1)
        verify_pos = anchor_pos.unsqueeze(1) + offsets
        logits, hidden = target.forward(verify_in, verify_pos, torch.ones_like(verify_in, dtype=torch.bool), True)
        assert hidden is not None
        if temperature == 0:
            verdict = verify_greedy(prop.tokens, logits, proposal_len)
        else:
            q = probabilities(prop.logits, temperature)
            verdict = verify_rejection(prop.tokens, q, logits, proposal_len, temperature, generator)
        accepted = verdict.accepted.tolist()
        drafts = prop.tokens.tolist()
        nxt = verdict.next_token.tolist()
        lens = proposal_len.tolist()
        keep = torch.tensor([a + 1 for a in accepted], device=device)
        done = []
        for b in range(bsz):
            kept, finished = rows.commit(b, [*drafts[b][: accepted[b]], nxt[b]])
            acc = min(accepted[b], kept)
            proposed = min(lens[b], kept) if finished and kept <= accepted[b] else lens[b]
            stats.add(proposed, acc, kept, None if prefix is None else prefix[b])
            done.append(finished)
        target.keep_last(keep, k + 1)
        width = int(keep.max())
        seg_valid = offsets[:width].unsqueeze(0) < keep.unsqueeze(1)
        drafter.append_context(hidden[:, :width], verify_pos[:, :width], seg_valid)
        rows.fed = [f + a + 1 for f, a in zip(rows.fed, accepted, strict=True)]
        anchor = verdict.next_token
        (anchor,) = _finish(rows, done, [target, drafter], [anchor], progress)
    _sync(device)
    return DecodeResult(_truncate(rows.generated, max_new_tokens), time.perf_counter() - start, stats)
