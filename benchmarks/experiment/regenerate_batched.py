"""Batched, in-process regeneration: the equivalent of ``dspark data regenerate`` for one GPU without a server.

``dspark data regenerate`` sends one chat request per turn to OpenAI-compatible endpoints; the reference
capture server answers them one at a time, which is far too slow for thousands of samples on a small
target. This runs the same recipe (chat template with thinking disabled, temperature 0.7, top_p 0.8,
top_k 20, one answer appended to each prompt-only record) with transformers' batched ``generate`` and writes
the same record format as the regeneration pipeline's output shards: ``{"id", "messages", "regeneration"}`` in
``OUTPUT/part-00000.jsonl`` (a directory the trainer reads as its dataset).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def regenerate(model_dir: str, input_path: Path, output_dir: Path, *, batch_size: int = 128, max_new_tokens: int = 256,
               max_prompt_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.8, top_k: int = 20,
               seed: int = 0, device: str = "cuda") -> dict[str, Any]:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    records = [json.loads(line) for line in input_path.read_text(encoding="utf-8").split("\n") if line.strip()]
    items = []
    for rec in records:
        text = tok.apply_chat_template(rec["messages"], tokenize=False, add_generation_prompt=True,
                                       enable_thinking=False)
        ids = tok(str(text), add_special_tokens=False)["input_ids"]
        if len(ids) <= max_prompt_tokens:
            items.append((rec, ids))
    items.sort(key=lambda it: len(it[1]))
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_tokens": max_new_tokens,
                "chat_template_kwargs": {"enable_thinking": False}, "seed": seed}
    eos = model.generation_config.eos_token_id
    start = time.perf_counter()
    written = truncated = 0
    with (output_dir / "part-00000.jsonl").open("w", encoding="utf-8") as out, \
            tqdm(total=len(items), desc="regenerate", unit="sample") as bar:
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.full((len(chunk), width), int(tok.pad_token_id), dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for b, (_, ids) in enumerate(chunk):
                input_ids[b, width - len(ids):] = torch.tensor(ids)
                mask[b, width - len(ids):] = 1
            with torch.no_grad():
                gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                     temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                                     pad_token_id=int(tok.pad_token_id), eos_token_id=eos)
            for b, (rec, ids) in enumerate(chunk):
                new = gen[b, width:].tolist()
                stop = [j for j, t in enumerate(new) if t in (eos if isinstance(eos, list) else [eos])]
                finish = "stop" if stop else "length"
                new = new[: stop[0]] if stop else new
                truncated += finish == "length"
                answer = tok.decode(new, skip_special_tokens=True)
                out.write(json.dumps({
                    "id": rec["id"], "messages": [*rec["messages"], {"role": "assistant", "content": answer}],
                    "regeneration": {"model": Path(model_dir).name, "sampling": sampling, "engine": "hf-batched",
                                     "turns": [{"message": len(rec["messages"]), "finish_reason": finish,
                                                "prompt_tokens": len(ids), "completion_tokens": len(new)}]},
                }, ensure_ascii=False) + "\n")
                written += 1
            bar.update(len(chunk))
    summary = {"read": len(records), "written": written, "skipped_long_prompts": len(records) - len(items),
               "truncated": truncated, "seconds": round(time.perf_counter() - start, 1)}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    print(json.dumps(regenerate(a.model, a.input, a.output, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                                device=a.device)))


if __name__ == "__main__":
    main()
