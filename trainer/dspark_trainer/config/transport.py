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
