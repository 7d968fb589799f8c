"""Helpers of the trainer tests: a small character-level tokenizer with a Qwen3-like chat template
(history assistant turns without the reasoning block, the last one with an empty one)."""

from __future__ import annotations

from typing import Any

QWEN3_LIKE_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "<|im_start|>assistant\n"
    "{% if loop.last %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m['content'] }}<|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def make_char_tokenizer(template: str = QWEN3_LIKE_TEMPLATE) -> Any:
    """A fast character-level tokenizer (printable ASCII + newline + specials)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {c: i for i, c in enumerate(chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = template
    return fast


def make_small_target(path: Any, hidden: int = 32, layers: int = 4, seed: int = 0) -> Any:
    """A tiny random Qwen3 causal LM with the character tokenizer, saved under ``path``."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = make_char_tokenizer()
    cfg = Qwen3Config(
        vocab_size=len(tok) + 1, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=1024,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


TESTS_DIR = __import__("pathlib").Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent.parent


def trainer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a trainer subprocess (one CPU thread per rank)."""
    import os
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def torchrun_cmd(config_path: Any, nproc: int, max_restarts: int = 0) -> list[str]:
    import sys
    from pathlib import Path

    from dspark_trainer.util.net import free_port

    torchrun = str(Path(sys.executable).parent / "torchrun")
    return [
        torchrun, "--nproc-per-node", str(nproc), "--max-restarts", str(max_restarts),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "dspark_trainer.cli", "train", "--config", str(config_path),
    ]


def write_config(path: Any, cfg: dict[str, Any]) -> Any:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def worker_pids(parent_pid: int) -> dict[int, int]:
    """LOCAL_RANK -> pid of the torchrun workers under ``parent_pid``."""
    from pathlib import Path

    out: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent_pid:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in env:
            if item.startswith(b"LOCAL_RANK="):
                out[int(item.split(b"=", 1)[1])] = int(proc.name)
    return out
