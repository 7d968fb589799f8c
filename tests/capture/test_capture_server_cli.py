"""`dspark capture-server` as a process: start, serve, stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from capture_helpers import http
from dspark_trainer.commands.capture_server import parse_layer_ids, parse_size
from harness.mooncake import MooncakeMaster, free_port
from server_helpers import wait_http_ok


def test_argument_parsing() -> None:
    assert parse_layer_ids(["-1", "3"]) == [-1, 3]
    assert parse_layer_ids(["1,9,17", "25"]) == [1, 9, 17, 25]
    assert parse_layer_ids(None) is None
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("2G") == 2_000_000_000
    assert parse_size("1048576") == 1 << 20


@pytest.mark.mooncake
def test_cli_serves_and_stops_on_sigterm(tiny_target: Path, mooncake_master: MooncakeMaster, tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable, "-m", "dspark_trainer.cli", "capture-server", "--model", str(tiny_target),
        "--layer-ids", "-1", "2,5", "--host", "127.0.0.1", "--port", str(port), "--master", mooncake_master.address,
        "--local-hostname", "127.0.0.1", "--segment-size", "64MiB", "--buffer-size", "32MiB", "--max-seq-len", "128",
    ]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GLOG_minloglevel": "2"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health_generate", proc, tmp_path / "server.log", timeout=120)
        status, _, info = http(f"{url}/info")
        assert info["layer_ids"] == [-1, 2, 5] and info["max_seq_len"] == 128
        status, _, ans = http(f"{url}/capture", {"request_id": "cli-1", "input_ids": [3, 1, 4, 1, 5]})
        assert status == 200 and ans["records"]["hidden"]["shape"] == [5, 3 * 64], ans
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "serving" in (tmp_path / "server.log").read_text()


def test_cli_reports_a_bad_model_dir(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dspark_trainer.cli", "capture-server", "--model", str(tmp_path / "nope"),
         "--master", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "cannot load the target" in out.stderr and "no config.json" in out.stderr
