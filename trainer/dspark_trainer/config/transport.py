"""Mooncake transport settings shared by capture servers and trainer ranks."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from dspark_trainer.config.base import ConfigModel

MIB = 1024 * 1024


class TransportProtocol(StrEnum):
    """Mooncake transfer protocol: RDMA on GPU clusters, TCP as the fallback (and in tests)."""

    RDMA = "rdma"
    TCP = "tcp"


class TransportConfig(ConfigModel):
    """How capture servers and trainers reach the Mooncake master and each other."""

    protocol: TransportProtocol = Field(TransportProtocol.TCP, description="Mooncake protocol: rdma or tcp.")
    master_address: str = Field(
        "127.0.0.1:50051", description="Mooncake master RPC address, host:port."
    )
    metadata_server: str = Field(
        "P2PHANDSHAKE",
        description="Mooncake metadata server: P2PHANDSHAKE, or the master's http://host:port/metadata URL.",
    )
    local_hostname: str | None = Field(
        None, description="Address this process advertises to peers. Default: the pod IP / 127.0.0.1."
    )
    device_names: str = Field(
        "", description="Comma-separated RDMA device names (e.g. mlx5_0,mlx5_1); empty lets Mooncake choose."
    )
    global_segment_size: int = Field(
        1024 * MIB, ge=16 * MIB, description="Bytes this process contributes to the distributed store."
    )
    local_buffer_size: int = Field(
        512 * MIB, ge=16 * MIB, description="Bytes of registered local buffer used for transfers."
    )
    key_ttl_seconds: float = Field(
        600.0, gt=0, description="A record nobody fetches is deleted after this many seconds."
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
    retry_initial_seconds: float = Field(0.05, gt=0, description="First back-off between retries.")
    retry_max_seconds: float = Field(2.0, gt=0, description="Longest back-off between retries.")
    janitor_interval_seconds: float = Field(
        60.0, gt=0, description="How often capture servers delete records older than keyTtlSeconds."
    )
    pin_memory: bool = Field(
        True, description="Use pinned (page-locked) host buffers for transfers when CUDA is available."
    )
