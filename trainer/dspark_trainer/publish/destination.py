"""Parsing a publish destination URI (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Hub repository ids: OWNER/NAME of letters, digits, '-', '_' and '.'.
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
FIX = "use s3://BUCKET/PREFIX (S3-compatible storage) or hf://OWNER/REPO[@REVISION] (Hugging Face Hub)"


@dataclass(frozen=True)
class S3Destination:
    """A prefix in an S3 bucket; the draft's files go under ``prefix/``."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, relative: str) -> str:
        """The object key of a file of the draft."""
        return f"{self.prefix}/{relative}" if self.prefix else relative


@dataclass(frozen=True)
class HubDestination:
    """A model repository on the Hugging Face Hub (and a branch)."""

    repo_id: str
    revision: str = "main"

    @property
    def uri(self) -> str:
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision != "main" else "")


Destination = S3Destination | HubDestination


def parse_destination(uri: str, field: str = "export.destination") -> Destination:
    """The destination ``uri`` names; ValueError naming ``field`` (when given) and the fix when it is not one."""
    try:
        return _parse(uri)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}" if field else str(exc)) from None


def _parse(uri: str) -> Destination:
    text = uri.strip()
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-'); {FIX}")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ValueError(f"the prefix {prefix!r} has an empty, '.' or '..' part; {FIX}")
        return S3Destination(bucket, prefix)
    if text.startswith("hf://"):
        repo, _, revision = text.removeprefix("hf://").partition("@")
        parts = repo.strip("/").split("/")
        if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts):
            raise ValueError(f"{repo!r} is not a Hub repository id OWNER/NAME; {FIX}")
        if "@" in text and not revision:
            raise ValueError(f"empty revision after '@'; {FIX}")
        return HubDestination("/".join(parts), revision or "main")
    raise ValueError(f"{uri!r} is not a destination; {FIX}")
