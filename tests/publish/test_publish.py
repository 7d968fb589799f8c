"""Publishing a draft: the destination parser, SigV4 against AWS's published example, a round trip through a real
S3-compatible server (gofakes3) including a multipart upload and the CLI, and the Hub path against a local fake."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.cli import main as dspark
from dspark_trainer.publish import HubDestination, S3Destination, parse_destination, publish_draft
from dspark_trainer.publish import s3 as s3mod
from dspark_trainer.publish.publisher import RECEIPT, published_uri
from dspark_trainer.publish.s3 import Credentials, S3Client, S3Error, authorization
from harness.s3server import S3Server

BUCKET = "drafts"


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    with S3Server(BUCKET, tmp_path / "gofakes3.log") as server:
        yield server


def make_draft(root: Path, weights: int = 3000) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["Qwen3DSparkModel"], "block_size": 7}))
    (root / "model.safetensors").write_bytes(os.urandom(weights))
    (root / "sub").mkdir()
    (root / "sub" / "notes.txt").write_text("x")
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://drafts/team-a/run-1/", S3Destination("drafts", "team-a/run-1")),
        ("s3://drafts", S3Destination("drafts", "")),
        ("hf://org/my-draft", HubDestination("org/my-draft", "main")),
        ("hf://org/my-draft@v2", HubDestination("org/my-draft", "v2")),
    ],
)
def test_destinations_parse(uri: str, expected: object) -> None:
    assert parse_destination(uri) == expected


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("/output/draft", "is not a destination"),
        ("s3://Bad_Bucket/x", "is not an S3 bucket name"),
        ("s3://drafts/a/../b", "'..' part"),
        ("hf://just-a-name", "OWNER/NAME"),
        ("hf://org/name@", "empty revision"),
        ("gs://bucket/x", "use s3://BUCKET/PREFIX"),
    ],
)
def test_bad_destinations_name_the_field_and_the_fix(uri: str, words: str) -> None:
    with pytest.raises(ValueError, match=r"export\.destination") as err:
        parse_destination(uri)
    assert words in str(err.value)
    assert "s3://BUCKET/PREFIX" in str(err.value)


def test_sigv4_matches_the_aws_example() -> None:
    # AWS's documented example: GET /test.txt from examplebucket with a Range header, 2013-05-24, us-east-1.
    headers = {"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9",
               "x-amz-content-sha256": s3mod.EMPTY_SHA256, "x-amz-date": "20130524T000000Z"}
    creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    auth = authorization("GET", "/test.txt", {}, headers, s3mod.EMPTY_SHA256, creds, "us-east-1", "20130524T000000Z")
    assert auth == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_round_trip_through_a_real_s3_server(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3mod, "MULTIPART_THRESHOLD", 1024)  # the 3000-byte weights go in three parts
    monkeypatch.setattr(s3mod, "PART_SIZE", 1024)
    draft = make_draft(tmp_path / "draft")
    lines: list[str] = []
    result = publish_draft(draft, f"s3://{BUCKET}/team-a/run-1", s3_endpoint_url=s3.endpoint, progress=lines.append)
    assert result.uri == f"s3://{BUCKET}/team-a/run-1"
    assert result.files == 3
    assert result.bytes == sum(p.stat().st_size for p in draft.rglob("*") if p.is_file() and p.name != RECEIPT)
    assert published_uri(draft) == result.uri  # the receipt stays in the draft directory, never uploaded
    client = S3Client(s3.endpoint)
    keys = sorted(client.list_keys(BUCKET, "team-a/run-1/"))
    assert keys == [f"team-a/run-1/{n}" for n in
                    ("config.json", "dspark-publish.json", "model.safetensors", "sub/notes.txt")]
    for name in ("config.json", "model.safetensors", "sub/notes.txt"):
        assert client.get_object(BUCKET, f"team-a/run-1/{name}") == (draft / name).read_bytes(), name
    listing = json.loads(client.get_object(BUCKET, "team-a/run-1/dspark-publish.json"))
    assert {f["path"]: f["sha256"] for f in listing["files"]} == {
        n: sha((draft / n).read_bytes()) for n in ("config.json", "model.safetensors", "sub/notes.txt")}
    assert any("draft published to s3://drafts/team-a/run-1" in line for line in lines)


def test_cli_publishes_and_prints_the_uri(s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    draft = make_draft(tmp_path / "draft")
    assert dspark(["publish", str(draft), f"s3://{BUCKET}/cli", "--endpoint-url", s3.endpoint]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"s3://{BUCKET}/cli"
    assert "cli/config.json" in S3Client(s3.endpoint).list_keys(BUCKET, "cli/")


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing bucket", "NoSuchBucket"),
        ("unreachable", "did not answer"),
        ("not a draft", "is not an exported draft"),
        ("no credentials", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set"),
    ],
)
def test_cli_errors_are_one_line(case: str, words: str, s3: S3Server, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    draft = make_draft(tmp_path / "draft")
    dest, endpoint = f"s3://{BUCKET}/x", s3.endpoint
    if case == "missing bucket":
        dest = "s3://no-such-bucket/x"
    elif case == "unreachable":
        endpoint = "http://127.0.0.1:1"
    elif case == "not a draft":
        draft = tmp_path
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    assert dspark(["publish", str(draft), dest, "--endpoint-url", endpoint]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dspark publish: ") and words in err and "\n" not in err, err


class FakeHub:
    """Records what an HfApi would be asked to do (the Hub cannot be reached here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id: str, **kw: Any) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def create_branch(self, repo_id: str, **kw: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw: Any) -> str:
        self.calls.append(("upload_folder", kw))
        root = Path(kw["folder_path"])
        self.uploaded = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return "https://huggingface.co/org/draft/commit/abc"


def test_hub_upload_makes_a_private_repo_a_branch_and_one_commit(tmp_path: Path) -> None:
    draft = make_draft(tmp_path / "draft")
    hub = FakeHub()
    result = publish_draft(draft, "hf://org/draft@v2", hub_api=hub)
    assert result.uri == "hf://org/draft@v2"
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1]["private"] is True and hub.calls[0][1]["exist_ok"] is True
    assert hub.calls[2][1]["revision"] == "v2" and hub.calls[2][1]["repo_id"] == "org/draft"
    assert set(hub.uploaded) == {"config.json", "model.safetensors", "sub/notes.txt", "dspark-publish.json"}


def test_s3_error_carries_the_code(s3: S3Server) -> None:
    with pytest.raises(S3Error) as err:
        S3Client(s3.endpoint).get_object(BUCKET, "absent")
    assert err.value.status == 404 and err.value.code == "NoSuchKey"


def test_the_trainer_publishes_once_with_credentials_from_the_mounted_secret(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dspark_trainer.config import JobConfig
    from dspark_trainer.runtime.publish_step import publish_export

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text("from-secret\n")
    (secret / "AWS_SECRET_ACCESS_KEY").write_text("s3cr3t")
    draft = make_draft(tmp_path / "draft")
    base = {"target": {"model": "builtin:tiny-qwen3"}, "dataset": {"path": "builtin:demo-conversations"}}
    config = JobConfig.model_validate({**base, "export": {
        "destination": f"s3://{BUCKET}/job", "s3EndpointUrl": s3.endpoint, "credentialsDir": str(secret)}})
    assert publish_export(config, str(draft)) == f"s3://{BUCKET}/job"
    client = S3Client(s3.endpoint, credentials=Credentials("any", "any"))
    client.request("DELETE", BUCKET, "job/config.json")
    # A restart after the completed run: the receipt says it is there, nothing is uploaded again.
    assert publish_export(config, str(draft)) == f"s3://{BUCKET}/job"
    assert "job/config.json" not in client.list_keys(BUCKET, "job/")
    assert publish_export(JobConfig.model_validate(base), str(draft)) is None
