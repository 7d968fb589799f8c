"""Regenerate the assistant turns of a ``messages`` jsonl dataset with the target model itself.

``dspark data regenerate`` reads conversations (a file, a directory or a glob of shards), sends each
conversation turn by turn to OpenAI-compatible chat endpoints (SGLang, or the reference capture server),
replaces every assistant turn with the target's answer, and writes sharded jsonl, resumably and exactly once.

Modules: ``options`` (sampling, retry and run settings), ``plan`` (deterministic shard plan from the input
order), ``output`` (atomic shard commits, manifest, resume state, summary), ``endpoints`` (HTTP client,
error classes, readiness), ``conversation`` (turn-by-turn regeneration with retries and fail-over; no Ray),
``pipeline`` (the Ray Data pipeline), ``local`` (the same work with plain asyncio, for comparison).
"""
