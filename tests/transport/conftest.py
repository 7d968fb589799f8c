"""Fixtures of the transport tests: a real Mooncake master on free ports of 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.mooncake import MooncakeMaster


@pytest.fixture
def mooncake_master(tmp_path: Path) -> Iterator[MooncakeMaster]:
    with MooncakeMaster(log_dir=tmp_path / "mooncake") as master:
        yield master
