"""SGLang 0.5.23's own draft-config parsers, taken from its source and run here: ``parse_dflash_draft_config``
(``speculative/dflash_utils.py``) and ``parse_dspark_draft_config`` / ``resolve_runtime_config``
(``speculative/dspark_components/dspark_config.py``). Their modules import CUDA kernels, so only the named
top-level definitions are compiled (from the unmodified source text) into a namespace of their own."""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List, Optional, Tuple  # noqa: UP035 - the names SGLang's annotations use

DFLASH_NAMES = ("DEFAULT_DFLASH_MASK_TOKEN", "build_target_layer_ids", "_cfg_get", "_get_text_config",
                "_get_dflash_config", "is_nemotron_35_draft_config", "_parse_optional_int", "DFlashDraftConfig",
                "parse_dflash_draft_config")
DSPARK_NAMES = ("DEFAULT_DSPARK_GAMMA", "SUPPORTED_DSPARK_MARKOV_HEAD_TYPES", "get_dspark_sample_from_anchor",
                "dspark_gamma_from_num_draft_tokens", "DSparkDraftConfig", "DSparkRuntimeConfig",
                "resolve_runtime_config", "_cfg_get", "_get_text_config", "_get_nested_config", "_get_dspark_config",
                "parse_dspark_draft_config")


def _compile(path: Path, names: Sequence[str], namespace: dict[str, Any]) -> dict[str, Any]:
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = []
    for node in tree.body:
        name = getattr(node, "name", None)
        if isinstance(node, ast.Assign):
            name = next((t.id for t in node.targets if isinstance(t, ast.Name)), None)
        if name in names:
            wanted.append(node)
    found = {getattr(n, "name", None) or n.targets[0].id for n in wanted}  # type: ignore[attr-defined]
    missing = set(names) - found
    if missing:
        raise AssertionError(f"{path.name}: {sorted(missing)} no longer defined at top level")
    module = ast.Module(body=[ast.ImportFrom("__future__", [ast.alias("annotations")], 0), *wanted], type_ignores=[])
    ast.fix_missing_locations(module)
    exec(compile(module, str(path), "exec"), namespace)
    return namespace


def _import_msgspec(site: Path) -> Any:
    """msgspec (DSparkDraftConfig is a msgspec.Struct) from the directory of SGLang's parser packages."""
    import importlib
    import sys

    sys.path.insert(0, str(site))
    try:
        return importlib.import_module("msgspec")
    finally:
        sys.path.remove(str(site))


def sglang_parsers(src: Path, site: Path) -> SimpleNamespace:
    """``parse_dflash_draft_config``, ``parse_dspark_draft_config`` and ``resolve_runtime_config`` of ``src``
    (``site``: where ``sglang_source.sglang_parser_path`` installed SGLang's parser packages, msgspec among them)."""
    msgspec = _import_msgspec(site)

    spec = src / "sglang/srt/speculative"
    base = {"Any": Any, "List": List, "Optional": Optional, "Tuple": Tuple, "Sequence": Sequence,  # noqa: UP006
            "dataclass": dataclass, "Integral": Integral, "logging": logging,
            "logger": logging.getLogger("sglang-parsers"), "msgspec": msgspec, "__name__": "sglang_parsers"}
    dflash = _compile(spec / "dflash_utils.py", DFLASH_NAMES, dict(base))
    dspark = _compile(spec / "dspark_components/dspark_config.py", DSPARK_NAMES,
                      {**base, "parse_dflash_draft_config": dflash["parse_dflash_draft_config"]})
    return SimpleNamespace(parse_dflash_draft_config=dflash["parse_dflash_draft_config"],
                           parse_dspark_draft_config=dspark["parse_dspark_draft_config"],
                           resolve_runtime_config=dspark["resolve_runtime_config"],
                           sample_from_anchor=dspark["get_dspark_sample_from_anchor"])
