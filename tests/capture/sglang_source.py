"""Obtain the pinned SGLang wheel's source (download once, cache) and check plugin targets against it with `ast`."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from dspark_trainer.capture.sglang_plugin import SGLangTarget


def cache_dir() -> Path:
    return Path(os.environ.get("DSPARK_CACHE_DIR", Path.home() / ".cache" / "dspark-k8s"))


def sglang_source(version: str) -> Path:
    """The unpacked `sglang==version` wheel (its top directory holds `sglang/`). Downloads with
    `pip download --no-deps` the first time, into ~/.cache/dspark-k8s/sglang-<version>/."""
    root = cache_dir() / f"sglang-{version}"
    src = root / "src"
    marker = src / ".complete"
    if marker.is_file():
        return src
    wheels = root / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"sglang-{version}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
             "-d", str(wheels), f"sglang=={version}"],
            check=True, timeout=900,
        )
        found = sorted(wheels.glob(f"sglang-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download left no sglang-{version} wheel in {wheels}")
    tmp = root / "src.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    with zipfile.ZipFile(found[0]) as zf:
        members = [m for m in zf.namelist() if m.startswith(("sglang/", f"sglang-{version}.dist-info/"))]
        zf.extractall(tmp, members=members)
    if src.exists():
        import shutil

        shutil.rmtree(src)
    tmp.rename(src)
    marker.write_text(found[0].name)
    return src


def _module_file(src: Path, parts: list[str]) -> tuple[Path, list[str]] | None:
    for i in range(len(parts), 0, -1):
        base = src.joinpath(*parts[:i])
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), parts[i:]
        if (base / "__init__.py").is_file():
            return base / "__init__.py", parts[i:]
    return None


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    if a.vararg:
        names.append(a.vararg.arg)
    if a.kwarg:
        names.append(a.kwarg.arg)
    return set(names)


def _find(body: list[ast.stmt], name: str, types: tuple[type, ...]) -> ast.AST | None:
    for node in body:
        if isinstance(node, types) and getattr(node, "name", None) == name:
            return node
    return None


def _assigned_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _self_attrs(cls: ast.ClassDef) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                out.add(t.attr)
    return out


def check_target(src: Path, target: SGLangTarget) -> list[str]:
    """Problems with one target in the SGLang source tree `src` (empty when it is there as expected)."""
    where = _module_file(src, target.path.split("."))
    if where is None:
        return [f"{target.path}: no such module"]
    file, rest = where
    tree = ast.parse(file.read_text(), filename=str(file))
    rel = file.relative_to(src)
    if target.kind == "module":
        return [] if not rest else [f"{target.path}: {rel} has no submodule {'.'.join(rest)}"]
    if target.kind == "string":
        found = any(isinstance(n, ast.Constant) and n.value == target.value for n in ast.walk(tree))
        return [] if found and not rest else [f"{target.path}: string {target.value!r} not found in {rel}"]
    if target.kind in ("function", "constant"):
        if len(rest) != 1:
            return [f"{target.path}: expected module.{target.kind} ({rel} left {rest})"]
        name = rest[0]
        if target.kind == "function":
            fn = _find(tree.body, name, (ast.FunctionDef, ast.AsyncFunctionDef))
            if fn is None:
                return [f"{target.path}: function {name} not found in {rel}"]
            missing = set(target.params) - _params(fn)  # type: ignore[arg-type]
            return [f"{target.path}: parameters {sorted(missing)} missing"] if missing else []
        for node in tree.body:
            if name in _assigned_names(node):
                value = getattr(node, "value", None)
                if target.value is None or any(
                    isinstance(n, ast.Constant) and n.value == target.value for n in ast.walk(value or node)
                ):
                    return []
                return [f"{target.path}: value does not contain {target.value!r}"]
        return [f"{target.path}: module-level name {name} not found in {rel}"]
    if len(rest) != 2:
        return [f"{target.path}: expected module.Class.member ({rel} left {rest})"]
    cls_name, member = rest
    cls = _find(tree.body, cls_name, (ast.ClassDef,))
    if not isinstance(cls, ast.ClassDef):
        return [f"{target.path}: class {cls_name} not found in {rel}"]
    if target.kind in ("method", "reads"):
        fn = _find(cls.body, member, (ast.FunctionDef, ast.AsyncFunctionDef))
        if fn is None:
            return [f"{target.path}: method {cls_name}.{member} not found in {rel}"]
        missing = set(target.params) - _params(fn)  # type: ignore[arg-type]
        if missing:
            return [f"{target.path}: parameters {sorted(missing)} missing from {cls_name}.{member}"]
        if target.kind == "reads" and not any(
            isinstance(n, ast.Attribute) and n.attr == target.value for n in ast.walk(fn)
        ):
            return [f"{target.path}: {cls_name}.{member} no longer reads .{target.value}"]
        return []
    if target.kind == "enum_member":
        if any(member in _assigned_names(n) for n in cls.body):
            return []
        return [f"{target.path}: member {member} not found in {cls_name}"]
    if target.kind == "attribute":
        if any(member in _assigned_names(n) for n in cls.body) or member in _self_attrs(cls):
            return []
        return [f"{target.path}: attribute {member} not found on {cls_name} in {rel}"]
    return [f"{target.path}: unknown target kind {target.kind}"]


# What `sglang.srt.server_args` imports beyond this project's environment (torch, transformers,
# pydantic, ... come from it): installed without dependencies beside the unpacked wheel, pinned.
SGLANG_PARSER_DEPS = (
    "msgspec==0.23.0",
    "orjson==3.13.0",
    "psutil==7.2.2",
    "pybase64==1.5.1",
    "pillow==13.0.0",
    "starlette==1.10.0",
    "pyzmq==27.3.0",
    "ipython==9.18.1",
    "traitlets==5.16.1",
)


def sglang_parser_path(version: str) -> list[Path]:
    """sys.path entries under which SGLang's own argument parser imports: the unpacked `sglang==version`
    and, in ~/.cache/dspark-k8s/sglang-<version>/site, the few packages its server_args module needs
    (installed once with `pip install --no-deps --target`, so SGLang's torch pin never touches this
    environment)."""
    src = sglang_source(version)
    site = cache_dir() / f"sglang-{version}" / "site"
    marker = site / ".complete"
    if not marker.is_file() or marker.read_text() != "\n".join(SGLANG_PARSER_DEPS):
        tmp = site.with_name("site.tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary", ":all:", "--target",
             str(tmp), *SGLANG_PARSER_DEPS],
            check=True, timeout=900,
        )
        if site.exists():
            import shutil

            shutil.rmtree(site)
        tmp.rename(site)
        marker.write_text("\n".join(SGLANG_PARSER_DEPS))
    return [src, site]
