"""What the pinned engines' draft loaders do with an export's weight names, replayed from their sources.

SGLang 0.5.23 (``sglang/srt/models/dflash.py``, ``dspark.py``) and vLLM 0.34.0
(``vllm/model_executor/models/qwen3_dflash.py``, ``qwen3_dspark.py``) cannot run here, so their
``load_weights`` key handling is replayed: the draft model's parameter names (built from the module
attributes its classes assign, each checked in the source with ``ast``), the name rules (prefixes
skipped, q/k/v and gate/up stacked, names refused or ignored: literals read from the source), and the
result (``LoadResult``). A renamed module, prefix or mapping in a new engine version fails the check.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspark_trainer.model.config import DSparkModelConfig


@dataclass
class LoadResult:
    """``loaded``: draft parameters the checkpoint fills; ``unloaded``: parameters nothing fills (taken from the
    target, placeholders, or garbage); ``ignored``: checkpoint names skipped silently; ``refused``: checkpoint
    names the loader raises on (the draft does not load)."""

    loaded: set[str] = field(default_factory=set)
    unloaded: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading sources
def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found")


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{cls.name}.{name} not found")


def self_attributes(path: Path, cls_name: str) -> dict[str, str]:
    """``self.<attr> = <Call>(...)`` in ``cls_name.__init__``: attribute -> the called name (source text)."""
    tree = ast.parse(path.read_text())
    init = _method(_class(tree, cls_name), "__init__")
    out: dict[str, str] = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    out.setdefault(t.attr, ast.unparse(value.func) if isinstance(value, ast.Call) else "")
    return out


def require_attributes(path: Path, cls_name: str, attrs: dict[str, str | None]) -> None:
    """Each attribute must be assigned in ``__init__`` (by a call to the given name, when not None)."""
    found = self_attributes(path, cls_name)
    bad = [f"{a} (built by {found.get(a)!r}, expected {want!r})" for a, want in attrs.items()
           if a not in found or (want is not None and found[a] != want)]
    if bad:
        raise AssertionError(f"{path.name}: {cls_name}.__init__ no longer assigns {bad}")


def module_literal(path: Path, name: str) -> Any:
    """The literal value of a module-level assignment."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name}: no module-level {name}")


def local_literal(path: Path, cls_name: str, method: str, name: str) -> Any:
    """The literal value assigned to local ``name`` in ``cls_name.method``."""
    fn = _method(_class(ast.parse(path.read_text()), cls_name), method)
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name}: {cls_name}.{method} assigns no {name}")


def class_call_keyword(path: Path, cls_name: str, attr: str, keyword: str) -> Any:
    """The literal keyword argument ``keyword`` of the call assigned to class attribute ``attr``."""
    for node in _class(ast.parse(path.read_text()), cls_name).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets):
            assert isinstance(node.value, ast.Call)
            for kw in node.value.keywords:
                if kw.arg == keyword:
                    return ast.literal_eval(kw.value)
    raise AssertionError(f"{path.name}: {cls_name}.{attr} has no literal {keyword}=")


def method_strings(path: Path, cls_name: str, method: str) -> set[str]:
    fn = _method(_class(ast.parse(path.read_text()), cls_name), method)
    return {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


# ----------------------------------------------------------------------------- the drafts' parameters
def _backbone(cfg: DSparkModelConfig, prefix: str = "") -> set[str]:
    names = {f"{prefix}norm.weight", f"{prefix}fc.weight", f"{prefix}hidden_norm.weight"}
    for i in range(cfg.num_draft_layers):
        p = f"{prefix}layers.{i}."
        names |= {p + "self_attn.qkv_proj.weight", p + "self_attn.o_proj.weight", p + "self_attn.q_norm.weight",
                  p + "self_attn.k_norm.weight", p + "mlp.gate_up_proj.weight", p + "mlp.down_proj.weight",
                  p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        if cfg.attention_bias:
            names |= {p + "self_attn.qkv_proj.bias", p + "self_attn.o_proj.bias"}
    return names


def _heads(cfg: DSparkModelConfig, prefix: str, *, gated: bool, rnn: bool) -> set[str]:
    names = {f"{prefix}markov_head.markov_w1.weight", f"{prefix}markov_head.markov_w2.weight"}
    if gated and cfg.markov_head_type == "gated":
        names |= {f"{prefix}markov_head.gate_proj.weight", f"{prefix}markov_head.gate_proj.bias"}
    if rnn and cfg.markov_head_type == "rnn":
        names |= {f"{prefix}markov_head.joint_proj.weight", f"{prefix}markov_head.joint_proj.bias"}
    if cfg.enable_confidence_head:
        names |= {f"{prefix}confidence_head.proj.weight", f"{prefix}confidence_head.proj.bias"}
    return names


# ----------------------------------------------------------------------------- SGLang
def check_sglang_structure(src: Path) -> None:
    """The SGLang modules whose attributes make the parameter names used below."""
    dflash, dspark = src / "sglang/srt/models/dflash.py", src / "sglang/srt/models/dspark.py"
    require_attributes(dflash, "DFlashDraftModel", {"layers": "nn.ModuleList", "norm": "norm_cls", "fc": None,
                                                    "hidden_norm": "norm_cls"})
    require_attributes(dflash, "DFlashDecoderLayer", {"input_layernorm": "norm_cls", "self_attn": None,
                                                      "post_attention_layernorm": "norm_cls", "mlp": "DFlashMLP"})
    require_attributes(dflash, "DFlashAttention", {"qkv_proj": None, "o_proj": "RowParallelLinear",
                                                   "q_norm": "norm_cls", "k_norm": "norm_cls"})
    require_attributes(dflash, "DFlashMLP", {"gate_up_proj": "MergedColumnParallelLinear",
                                             "down_proj": "RowParallelLinear"})
    require_attributes(dspark, "VanillaMarkov", {"markov_w1": "nn.Embedding", "markov_w2": "nn.Linear"})
    require_attributes(dspark, "GatedMarkovHead", {"gate_proj": "nn.Linear"})
    require_attributes(dspark, "RNNHead", {"joint_proj": "nn.Linear"})
    require_attributes(dspark, "DSparkConfidenceHead", {"proj": "nn.Linear"})
    require_attributes(dspark, "DSparkDraftMixin", {"markov_head": None, "confidence_head": "build_confidence_head",
                                                    "lm_head": None})


def sglang_load(src: Path, names: list[str], cfg: DSparkModelConfig, algorithm: str) -> LoadResult:
    """SGLang's ``load_weights`` of ``Qwen3DSparkModel`` (``DSPARK``) or ``DFlashDraftModel`` (``DFLASH``)."""
    check_sglang_structure(src)
    dflash, dspark = src / "sglang/srt/models/dflash.py", src / "sglang/srt/models/dspark.py"
    stacked = local_literal(dflash, "DFlashDraftModel", "load_weights", "stacked_params_mapping")
    params = _backbone(cfg)
    if algorithm == "DSPARK":
        params |= _heads(cfg, "", gated=True, rnn=True)
    res = LoadResult()
    backbone: list[str] = []
    if algorithm == "DSPARK":
        skipped = module_literal(dspark, "_DSPARK_SKIPPED_WEIGHT_PREFIXES")
        rules = method_strings(dspark, "DSparkDraftMixin", "load_weights")
        assert {"embed_tokens.", "confidence_head.", "markov_head."} <= rules, "DSpark loader rules changed"
        for name in names:
            norm = name.removeprefix("model.")
            if norm.startswith(tuple(skipped)) or norm.startswith("embed_tokens."):
                res.ignored.add(name)
            elif name.startswith(("confidence_head.", "markov_head.")):
                if name.startswith("confidence_head.") and not cfg.enable_confidence_head:
                    res.ignored.add(name)
                elif name in params:
                    res.loaded.add(name)
                else:
                    res.refused.append(name)  # "DSpark unexpected markov/confidence weight"
            else:
                backbone.append(name)
    else:
        backbone = list(names)
    for name in backbone:  # DFlashDraftModel.load_weights
        for param_name, weight_name, _shard in stacked:
            if f".{weight_name}." not in name:
                continue
            mapped = name.replace(weight_name, param_name)
            if mapped in params:
                res.loaded.add(mapped)
                break
        else:
            if name in params:
                res.loaded.add(name)
            else:
                res.ignored.add(name)  # "Ignore unexpected weights"
    res.unloaded = params - res.loaded
    return res


# ----------------------------------------------------------------------------- vLLM
def check_vllm_structure(src: Path) -> None:
    models = src / "vllm/model_executor/models"
    dflash, dspark = models / "qwen3_dflash.py", models / "qwen3_dspark.py"
    require_attributes(dflash, "DFlashQwen3Model", {"layers": "nn.ModuleList", "fc": "ReplicatedLinear",
                                                    "hidden_norm": "RMSNorm", "norm": "RMSNorm",
                                                    "embed_tokens": "VocabParallelEmbedding",
                                                    "mask_embedding": "nn.Parameter"})
    require_attributes(dflash, "DFlashQwen3DecoderLayer", {"self_attn": "DFlashQwen3Attention", "mlp": "Qwen3MLP",
                                                           "input_layernorm": "RMSNorm",
                                                           "post_attention_layernorm": None})
    require_attributes(dflash, "DFlashQwen3Attention", {"qkv_proj": "QKVParallelLinear", "o_proj": "RowParallelLinear",
                                                        "q_norm": "RMSNorm", "k_norm": "RMSNorm"})
    require_attributes(models / "qwen2.py", "Qwen2MLP", {"gate_up_proj": "MergedColumnParallelLinear",
                                                         "down_proj": "RowParallelLinear"})
    require_attributes(dflash, "DFlashQwen3ForCausalLM", {"model": None, "lm_head": "ParallelLMHead"})
    require_attributes(dspark, "DSparkMarkovHead", {"markov_w1": "nn.Embedding", "markov_w2": "ParallelLMHead"})
    require_attributes(dspark, "DSparkConfidenceHead", {"proj": "ReplicatedLinear"})
    require_attributes(dspark, "Qwen3DSparkModel", {"markov_head": "DSparkMarkovHead", "confidence_head": None})
    require_attributes(dspark, "Qwen3DSparkForCausalLM", {"model": None, "lm_head": "ParallelLMHead"})


def vllm_load(src: Path, names: list[str], cfg: DSparkModelConfig, method: str) -> LoadResult:
    """vLLM's ``load_weights`` of ``Qwen3DSparkForCausalLM`` (``dspark``) or ``DFlashQwen3ForCausalLM`` (``dflash``)."""
    check_vllm_structure(src)
    models = src / "vllm/model_executor/models"
    cls = "Qwen3DSparkForCausalLM" if method == "dspark" else "DFlashQwen3ForCausalLM"
    file = models / ("qwen3_dspark.py" if method == "dspark" else "qwen3_dflash.py")
    rules = method_strings(file, cls, "load_weights")
    assert {"model.", "lm_head", "embed_tokens"} <= rules, f"{cls}.load_weights rules changed"
    stacked: dict[str, Any] = class_call_keyword(models / "qwen3_dflash.py", "DFlashQwen3Model", "hf_to_vllm_mapper",
                                                 "orig_to_new_stacked")
    params = _backbone(cfg, "model.") | {"model.embed_tokens.weight", "model.mask_embedding", "lm_head.weight"}
    if method == "dspark":
        params |= _heads(cfg, "model.", gated=False, rnn=False)  # DSparkMarkovHead: markov_w1, markov_w2 only
    renamed = {n: (n if "lm_head" in n else "model." + n) for n in names}
    dropped = {"mask_embedding"}
    if not any("embed_tokens" in n for n in renamed.values()):
        dropped.add("embed_tokens")
    if method == "dspark":
        if not any("lm_head" in n for n in renamed.values()):
            dropped.add("lm_head")
        if not cfg.enable_confidence_head:
            dropped.add("confidence_head")
        assert "confidence_head" in rules and "mask_embedding" in rules
    res = LoadResult()
    for orig, name in renamed.items():
        if any(d in name for d in dropped):
            res.ignored.add(orig)
            continue
        for old, (new, _shard) in stacked.items():
            if old + "." in name:
                name = name.replace(old + ".", new + ".")
                break
        if name in params:
            res.loaded.add(name)
        else:
            res.refused.append(orig)  # AutoWeightsLoader: "There is no module or parameter named ..."
    res.unloaded = params - res.loaded
    return res


VLLM_SHARED_OR_PLACEHOLDER = {"model.embed_tokens.weight", "lm_head.weight", "model.mask_embedding"}
"""Parameters vLLM fills from the target (embedding, LM head) or never reads (the mask-embedding placeholder)."""
