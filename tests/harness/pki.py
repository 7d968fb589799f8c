"""Certificates and keys for the local test control plane, made with the `openssl` command line.

Everything is ECDSA P-256 (fast to generate on small machines) and valid for 30 days. Only
loopback names are put into serving certificates: the control plane never leaves 127.0.0.1.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CERT_DAYS = 30


class PKIError(RuntimeError):
    """openssl is missing or one of its commands failed."""


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path | None = None) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise PKIError("the `openssl` command is needed to make the test cluster's certificates")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PKIError(f"openssl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def _subject(common_name: str, organizations: tuple[str, ...]) -> str:
    return "/" + "/".join([*(f"O={o}" for o in organizations), f"CN={common_name}"])


@dataclass(frozen=True)
class PKI:
    """All credentials of one test cluster, under one directory."""

    directory: Path
    ca: CertPair
    service_account_key: Path
    service_account_pub: Path

    @classmethod
    def create(cls, directory: Path) -> PKI:
        """Makes a fresh CA and the service-account signing key pair in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = CertPair(directory / "ca.crt", directory / "ca.key")
        _ec_key(ca.key)
        _openssl(
            "req", "-x509", "-new", "-key", str(ca.key), "-sha256", "-days", str(CERT_DAYS),
            "-subj", "/CN=dspark-test-cluster-ca", "-out", str(ca.cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
        sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
        _ec_key(sa_key)
        _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
        return cls(directory, ca, sa_key, sa_pub)

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server: bool = False,
        client: bool = True,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> CertPair:
        """Issues `<name>.crt`/`<name>.key` signed by the CA (client and/or server usage)."""
        pair = CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        _ec_key(pair.key)
        usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
        ext = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={','.join(usages)}",
        ]
        sans = [f"DNS:{d}" for d in dns_names] + [f"IP:{ip}" for ip in ip_addresses]
        if sans:
            ext.append(f"subjectAltName={','.join(sans)}")
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            csr = Path(tmp) / "req.csr"
            extfile = Path(tmp) / "ext.cnf"
            extfile.write_text("\n".join(ext) + "\n")
            _openssl(
                "req", "-new", "-key", str(pair.key), "-subj", _subject(common_name, organizations),
                "-out", str(csr),
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(self.ca.cert), "-CAkey", str(self.ca.key),
                "-CAcreateserial", "-sha256", "-days", str(CERT_DAYS), "-extfile", str(extfile),
                "-out", str(pair.cert),
            )  # fmt: skip
        return pair
