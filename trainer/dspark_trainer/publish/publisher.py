"""``publish_draft``: copy an exported draft directory to its destination, with a manifest written last."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark_trainer.publish.destination import HubDestination, S3Destination, parse_destination

log = logging.getLogger(__name__)
MANIFEST = "dspark-publish.json"
RECEIPT = ".dspark-published.json"  # in the draft directory: where it was published (never uploaded)


def read_credentials(credentials_dir: str | os.PathLike[str] | None) -> dict[str, str]:
    """The environment with the files of ``credentials_dir`` (a mounted Secret: one file per key) on top."""
    env = dict(os.environ)
    if credentials_dir is not None:
        for path in Path(credentials_dir).iterdir():
            if path.is_file() and not path.name.startswith("."):
                env[path.name] = path.read_text().strip()
    return env


def published_uri(draft_dir: str | os.PathLike[str]) -> str | None:
    """Where this draft directory was published before (None: never, or it changed since)."""
    try:
        receipt = json.loads((Path(draft_dir) / RECEIPT).read_text())
    except (OSError, ValueError):
        return None
    return str(receipt["uri"]) if isinstance(receipt, dict) and "uri" in receipt else None


@dataclass(frozen=True)
class PublishResult:
    """Where the draft went, and what was copied."""

    uri: str
    files: int
    bytes: int
    seconds: float


def draft_files(draft_dir: Path) -> list[Path]:
    """The files of a draft directory, sorted (the manifest of an earlier publish excluded)."""
    if not (draft_dir / "config.json").is_file():
        raise ValueError(f"{draft_dir} is not an exported draft (no config.json)")
    return sorted(p for p in draft_dir.rglob("*") if p.is_file() and p.name not in (MANIFEST, RECEIPT))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(draft_dir: Path, files: list[Path]) -> dict[str, Any]:
    """Every file's relative path, size and SHA-256: a reader knows the upload is complete when this exists."""
    return {"files": [{"path": p.relative_to(draft_dir).as_posix(), "size": p.stat().st_size,
                       "sha256": sha256_file(p)} for p in files]}


def publish_draft(
    draft_dir: str | os.PathLike[str],
    destination: str,
    *,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
    hf_token: str | None = None,
    credentials_dir: str | os.PathLike[str] | None = None,
    hub_api: Any = None,
    progress: Callable[[str], None] = log.info,
) -> PublishResult:
    """Copy the draft at ``draft_dir`` to ``destination`` (``s3://BUCKET/PREFIX`` or ``hf://OWNER/REPO[@REV]``).

    S3: one object per file under the prefix, then ``dspark-publish.json`` (sizes and SHA-256 of every file)
    last, so a reader that finds the manifest finds a complete draft; publishing again overwrites the same keys.
    The Hub: one commit with every file and the manifest. Credentials: the files of ``credentials_dir`` (a
    mounted Secret), else the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, HF_TOKEN). Afterwards the
    draft directory holds a receipt with the URI (``published_uri``).
    """
    root = Path(draft_dir)
    target = parse_destination(destination)
    files = draft_files(root)
    total = sum(p.stat().st_size for p in files)
    start = time.monotonic()
    listing = manifest(root, files)
    env = read_credentials(credentials_dir)
    if isinstance(target, S3Destination):
        from dspark_trainer.publish.s3 import Credentials, S3Client

        client = S3Client(s3_endpoint_url, s3_region, Credentials.from_env(env))
        client.head_bucket(target.bucket)
        done = 0
        for path in files:
            relative = path.relative_to(root).as_posix()
            done += client.put_file(target.bucket, target.key(relative), path)
            progress(f"published {relative} ({done / 2**20:.1f} / {total / 2**20:.1f} MiB)")
        client.request("PUT", target.bucket, target.key(MANIFEST), body=json.dumps(listing, indent=1).encode(),
                       headers={"Content-Type": "application/json"})
    else:
        assert isinstance(target, HubDestination)
        from dspark_trainer.publish.hub import upload_to_hub

        (root / MANIFEST).write_text(json.dumps(listing, indent=1))
        url = upload_to_hub(root, target, token=hf_token or env.get("HF_TOKEN"), api=hub_api)
        progress(f"published {len(files)} files to {target.uri} ({url})")
    result = PublishResult(target.uri, len(files), total, time.monotonic() - start)
    (root / RECEIPT).write_text(json.dumps({"uri": result.uri, "files": len(files), "bytes": total}))
    progress(f"draft published to {result.uri}: {result.files} files, {result.bytes / 2**20:.1f} MiB in "
             f"{result.seconds:.1f}s")
    return result
