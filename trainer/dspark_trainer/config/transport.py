"""Mooncake transport settings shared by capture servers, trainer ranks and the Mooncake master."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field

from dspark_trainer.config.base import ConfigModel

MIB = 1024 * 1024
GIB = 1024 * MIB
INFINIBAND_SYSFS = Path("/sys/class/infiniband")


class TransportProtocol(StrEnum):
    """Mooncake transfer protocol: RDMA on GPU clusters, TCP as the fallback (and in tests)."""

    AUTO = "auto"
    RDMA = "rdma"
    TCP = "tcp"


def local_rdma_devices(sysfs: Path = INFINIBAND_SYSFS) -> list[str]:
    """RDMA devices this machine has (names under /sys/class/infiniband), sorted; [] when none."""
    try:
        return sorted(p.name for p in sysfs.iterdir())
    except OSError:
        return []


class TransportSettings(ConfigModel):
    """The transport options a user chooses (the CRD's spec.transport reuses them)."""

    protocol: TransportProtocol = Field(
        TransportProtocol.AUTO,
        description=(
            "Mooncake protocol: rdma, tcp, or auto (rdma when RDMA devices are there, else tcp; the operator "
            "decides once per job from the nodes' RDMA resources and renders the choice)."
        ),
    )
    device_names: str = Field(
        "",
        max_length=1024,
        description="Comma-separated RDMA device names (e.g. mlx5_0,mlx5_1); empty lets Mooncake choose.",
    )
    global_segment_size: int = Field(
        4 * GIB,
        ge=16 * MIB,
        description="Bytes each capture server contributes to the distributed store (trainer ranks contribute none).",
    )
    local_buffer_size: int = Field(
        1 * GIB, ge=16 * MIB, description="Bytes of registered local buffer each process uses for transfers."
    )
    key_ttl_seconds: float = Field(
        600.0, gt=0, description="A record nobody fetches is deleted after this many seconds."
    )

    def resolved_protocol(self) -> TransportProtocol:
        """`protocol`, with auto decided by this machine's RDMA devices (a process outside the operator)."""
        if self.protocol != TransportProtocol.AUTO:
            return TransportProtocol(self.protocol)
        return TransportProtocol.RDMA if local_rdma_devices() else TransportProtocol.TCP


class TransportConfig(TransportSettings):
    """How capture servers and trainers reach the Mooncake master and each other, and where the master listens."""

    master_address: str = Field(
        "127.0.0.1:50051",
        pattern=r"^[^:\s]+:[0-9]{1,5}$",
        description="Mooncake master RPC address, host:port (the master listens on its port).",
    )
    metadata_server: str = Field(
        "P2PHANDSHAKE",
        description="Mooncake metadata server: P2PHANDSHAKE, or the master's http://host:port/metadata URL.",
    )
    local_hostname: str | None = Field(
        None, description="Address this process advertises to peers. Default: the pod IP / 127.0.0.1."
    )
    replica_num: int = Field(1, ge=1, le=8, description="Replicas Mooncake keeps of each record.")
    hard_pin: bool = Field(
        True,
        description=(
            "Hard-pin records so Mooncake never evicts one before it is fetched; a full store then makes "
            "writers wait (back-pressure) instead of silently dropping samples. Abandoned records are removed "
            "by the key-TTL janitor."
        ),
    )
    connect_timeout_seconds: float = Field(
        60.0, gt=0, description="How long a process retries connecting to the Mooncake master at start."
    )
    put_timeout_seconds: float = Field(
        30.0, gt=0, description="How long a write retries while the store is full before it fails."
    )
    unavailable_timeout_seconds: float = Field(
        5.0, gt=0, description="How long one operation retries while the master is unreachable before it fails."
    )
    not_found_timeout_seconds: float = Field(
        5.0, ge=0, description="How long a read retries a key that is not there yet before it counts as lost."
    )
    write_queue_records: int = Field(
        64, ge=1, le=65536, description="SGLang capture: records waiting for the asynchronous writer, at most."
    )
    write_queue_bytes: int = Field(
        2 * GIB,
        ge=16 * MIB,
        description=(
            "SGLang capture: bytes of records waiting for the asynchronous writer (held in host memory), at most."
        ),
    )
    write_block_seconds: float = Field(
        5.0,
        ge=0,
        description=(
            "SGLang capture: how long a capture waits in the scheduler for room in a full write queue before it "
            "fails with reason writer_full (keep it below SGLang's 20 s health-check timeout)."
        ),
    )
    retry_initial_seconds: float = Field(0.05, gt=0, description="First back-off between retries.")
    retry_max_seconds: float = Field(2.0, gt=0, description="Longest back-off between retries.")
    janitor_interval_seconds: float = Field(
        60.0, gt=0, description="How often capture servers delete records older than keyTtlSeconds."
    )
    pin_memory: bool = Field(
        True, description="Use pinned (page-locked) host buffers for transfers when CUDA is available."
    )
    master_metrics_port: int = Field(
        9003, ge=1, le=65535, description="Port of the Mooncake master's Prometheus metrics."
    )

    @property
    def master_rpc_port(self) -> int:
        """The master's RPC port: the port of masterAddress (clients and the master read the same field)."""
        _host, _, port = self.master_address.rpartition(":")
        return int(port)

    @property
    def master_metadata_port(self) -> int | None:
        """The master's HTTP metadata port when metadataServer is its http://host:port/metadata URL, else None."""
        if not self.metadata_server.startswith(("http://", "https://")):
            return None
        return urlsplit(self.metadata_server).port

    def local_address(self) -> str:
        """The address this process advertises: localHostname, else the pod IP ($DSPARK_POD_IP), else 127.0.0.1."""
        return self.local_hostname or os.environ.get("DSPARK_POD_IP", "").strip() or "127.0.0.1"
