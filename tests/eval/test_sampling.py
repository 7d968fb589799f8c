"""Verification rules: greedy acceptance, and rejection sampling whose tokens follow the target's distribution."""

from __future__ import annotations

import torch
from dspark_trainer.eval.sampling import probabilities, verify_greedy, verify_rejection


def test_greedy_accepts_the_matching_prefix_then_corrects() -> None:
    target = torch.full((2, 4, 6), -5.0)
    best = [[1, 2, 3, 4], [5, 0, 1, 2]]
    for b, row in enumerate(best):
        for j, t in enumerate(row):
            target[b, j, t] = 5.0
    drafts = torch.tensor([[1, 2, 0], [5, 0, 1]])
    v = verify_greedy(drafts, target, torch.tensor([3, 3]))
    assert v.accepted.tolist() == [2, 3] and v.next_token.tolist() == [3, 2]  # correction / bonus
    v = verify_greedy(drafts, target, torch.tensor([3, 1]))  # row 1 proposed only its first draft
    assert v.accepted.tolist() == [2, 1] and v.next_token.tolist() == [3, 0]


def test_rejection_sampling_reproduces_the_target_distribution() -> None:
    """First token of a round over many rows: draft from q, verify against p -> distributed as p."""
    n, vocab, temp = 200_000, 5, 0.7
    g = torch.Generator().manual_seed(0)
    t_logits = torch.tensor([2.0, 0.5, -1.0, 1.0, 0.0])
    d_logits = torch.tensor([-1.0, 1.5, 0.5, 0.0, 2.0])
    q = probabilities(d_logits, temp).expand(n, 1, vocab).contiguous()
    drafts = torch.multinomial(q[:, 0], 1, generator=g)
    target = t_logits.expand(n, 2, vocab).contiguous()
    v = verify_rejection(drafts, q, target, torch.ones(n, dtype=torch.long), temp, g)
    first = torch.where(v.accepted > 0, drafts[:, 0], v.next_token)
    freq = torch.bincount(first, minlength=vocab).float() / n
    torch.testing.assert_close(freq, probabilities(t_logits, temp), atol=4e-3, rtol=0)
    # the acceptance rate is 1 - TV(p, q)
    p = probabilities(t_logits, temp)
    expected = 1 - 0.5 * (p - q[0, 0]).abs().sum()
    assert abs(float(v.accepted.float().mean()) - float(expected)) < 4e-3
