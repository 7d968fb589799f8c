"""A small S3 client (path-style requests, AWS Signature Version 4) for uploading drafts: one PUT per file up
to ``MULTIPART_THRESHOLD``, multipart uploads above it. Standard library only.

Credentials and settings come from the usual variables: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN`` (optional), ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (S3-compatible stores such as MinIO or Ceph), unless given explicitly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import os
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 64 * 1024 * 1024


class S3Error(Exception):
    """An S3 request failed (status 0: no answer)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if env is None else env
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise S3Error(0, "NoCredentials", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set (on "
                          "Kubernetes: spec.trainer.export.credentialsSecret names a Secret with these keys)")
        return cls(key, secret, env.get("AWS_SESSION_TOKEN") or None)


def quote_path(path: str) -> str:
    """URI-encode a path as SigV4 wants it (every byte but unreserved characters and '/')."""
    return urllib.parse.quote(path, safe="/-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )


def signing_key(secret_key: str, date: str, region: str, service: str = "s3") -> bytes:
    """The SigV4 key for one day, region and service."""
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def authorization(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], payload_sha256: str,
    credentials: Credentials, region: str, amz_date: str,
) -> str:
    """The ``Authorization`` header of a request; ``headers`` are the signed ones (host and x-amz-* included)."""
    names = sorted(h.lower() for h in headers)
    values = {h.lower(): " ".join(str(v).split()) for h, v in headers.items()}
    canonical = "\n".join([
        method, quote_path(path), canonical_query(query),
        "".join(f"{n}:{values[n]}\n" for n in names), ";".join(names), payload_sha256,
    ])
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(signing_key(credentials.secret_key, amz_date[:8], region), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope},SignedHeaders={';'.join(names)}," \
           f"Signature={signature}"


def _error(status: int, body: bytes) -> S3Error:
    try:
        root = ET.fromstring(body)
        return S3Error(status, root.findtext("Code") or "Error", root.findtext("Message") or body.decode()[:200])
    except ET.ParseError:
        return S3Error(status, "Error", body.decode(errors="replace")[:200])


class S3Client:
    """Path-style S3 requests against one endpoint."""

    def __init__(self, endpoint_url: str | None = None, region: str | None = None,
                 credentials: Credentials | None = None, timeout: float = 300.0) -> None:
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                    or f"https://s3.{self.region}.amazonaws.com")
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"S3 endpoint {endpoint!r}: give http(s)://HOST[:PORT]")
        self.endpoint = endpoint
        self.scheme, self.netloc = parsed.scheme, parsed.netloc
        self.credentials = credentials or Credentials.from_env()
        self.timeout = timeout

    def request(self, method: str, bucket: str, key: str = "", *, query: Mapping[str, str] | None = None,
                body: bytes = b"", headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One signed request; raises S3Error on a non-2xx answer or no answer."""
        path = f"/{bucket}/{key}" if key else f"/{bucket}"
        query = dict(query or {})
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        signed = {"host": self.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload}
        if self.credentials.session_token:
            signed["x-amz-security-token"] = self.credentials.session_token
        auth = authorization(method, path, query, signed, payload, self.credentials, self.region, amz_date)
        all_headers = {**signed, **(headers or {}), "Authorization": auth, "Content-Length": str(len(body))}
        url = quote_path(path) + (f"?{canonical_query(query)}" if query else "")
        conn_type = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = conn_type(self.netloc, timeout=self.timeout)
        try:
            conn.request(method, url, body=body or None, headers=all_headers)
            response = conn.getresponse()
            data = response.read()
        except OSError as exc:
            raise S3Error(0, "Unreachable", f"S3 endpoint {self.endpoint} did not answer: {exc}") from exc
        finally:
            conn.close()
        if response.status >= 300:
            raise _error(response.status, data)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def head_bucket(self, bucket: str) -> None:
        """Check the bucket exists and these credentials may use it (a HEAD answer has no error body)."""
        try:
            self.request("HEAD", bucket)
        except S3Error as exc:
            if exc.status == 404:
                raise S3Error(404, "NoSuchBucket", f"bucket {bucket!r} does not exist at {self.endpoint}; create "
                              "it or fix the destination") from None
            if exc.status == 403:
                raise S3Error(403, "AccessDenied", f"the credentials may not use bucket {bucket!r} at "
                              f"{self.endpoint} (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from None
            raise

    def put_file(self, bucket: str, key: str, path: Path) -> int:
        """Upload one file (multipart above MULTIPART_THRESHOLD); returns its size."""
        size = path.stat().st_size
        if size <= MULTIPART_THRESHOLD:
            self.request("PUT", bucket, key, body=path.read_bytes())
            return size
        _, _, data = self.request("POST", bucket, key, query={"uploads": ""})
        upload_id = _findtext(data, "UploadId")
        try:
            etags = [
                self.request("PUT", bucket, key, query={"partNumber": str(n), "uploadId": upload_id},
                             body=chunk)[1]["etag"]
                for n, chunk in enumerate(_chunks(path, PART_SIZE), start=1)
            ]
            parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
                            for n, e in enumerate(etags, start=1))
            body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
            self.request("POST", bucket, key, query={"uploadId": upload_id}, body=body)
        except BaseException:
            self.request("DELETE", bucket, key, query={"uploadId": upload_id})
            raise
        return size

    def get_object(self, bucket: str, key: str) -> bytes:
        return self.request("GET", bucket, key)[2]

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, all pages)."""
        keys: list[str] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
            root = ET.fromstring(self.request("GET", bucket, query=query)[2])
            ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
            keys += [c.findtext(f"{ns}Key") or "" for c in root.findall(f"{ns}Contents")]
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return keys


def _findtext(xml: bytes, tag: str) -> str:
    root = ET.fromstring(xml)
    for element in root.iter():
        if element.tag.rpartition("}")[2] == tag and element.text:
            return element.text
    raise S3Error(0, "BadResponse", f"no {tag} in the answer: {xml[:200]!r}")


def _chunks(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk
