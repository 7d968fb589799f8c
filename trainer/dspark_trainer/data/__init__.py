"""Training data: conversations on disk -> tokenized samples with an assistant loss mask -> a
deterministic, resumable per-rank stream -> captured hidden states (through the capture client).

Modules (each with one job; importing this package pulls in nothing heavy):
- ``records``: index OpenAI-style ``messages`` jsonl and read records on demand; every record gets a stable id.
- ``split``: the deterministic train/eval split.
- ``tokenize``: chat-template tokenization and the assistant-token loss mask.
- ``sharding``: pure functions for per-epoch permutations, per-rank shards and the cursor.
- ``stream``: the per-rank sample stream that starts from a checkpointed cursor.
- ``batching``: collate captured samples into a padded micro-batch.
- ``capture_client``: the trainer-rank client of the capture servers.
- ``demo_dataset``: the generator of the bundled demo conversations.
"""
