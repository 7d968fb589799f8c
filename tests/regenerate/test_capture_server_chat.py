"""The whole regeneration path without SGLang: `dspark capture-server` (real Mooncake master) serves
/v1/chat/completions next to /capture, and `dspark data regenerate` (Ray) runs against it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from regen_helpers import child_env, kill_session, read_jsonl
from server_helpers import wait_http_ok


def http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.mooncake
def test_regenerate_against_the_capture_server(tiny_target: Path, tmp_path: Path) -> None:
    from harness.mooncake import MooncakeMaster, free_port

    with MooncakeMaster(log_dir=tmp_path / "mooncake") as master:
        port = free_port()
        cmd = [sys.executable, "-m", "dspark_trainer.cli", "capture-server", "--model", str(tiny_target),
               "--layer-ids", "0", "1", "--host", "127.0.0.1", "--port", str(port), "--master", master.address,
               "--local-hostname", "127.0.0.1", "--segment-size", "64MiB", "--buffer-size", "32MiB",
               "--dtype", "float32", "--served-model-name", "tiny-target"]
        env = {**child_env(), "GLOG_minloglevel": "2"}
        server = subprocess.Popen(cmd, stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(f"{url}/health_generate", server, tmp_path / "server.log", timeout=180, interval=0.2)
            assert http(f"{url}/v1/models")[1]["data"][0]["id"] == "tiny-target"

            inp, out = tmp_path / "prompts.jsonl", tmp_path / "out"
            convs = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "old"}]
                     for i in range(6)]
            inp.write_text("".join(json.dumps({"id": f"q{i}", "messages": m}) + "\n" for i, m in enumerate(convs)))
            run = subprocess.run(
                [sys.executable, "-m", "dspark_trainer.cli", "data", "regenerate", "--input", str(inp), "--output",
                 str(out), "--endpoint", url, "--shard-size", "3", "--max-tokens", "8", "--num-cpus", "2",
                 "--object-store-memory", str(200 * 2**20), "--no-progress"],
                capture_output=True, text=True, env=child_env(), timeout=300, start_new_session=True,
            )
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            data = [r for p in sorted(out.glob("part-*.jsonl")) for r in read_jsonl(p)]
            assert [r["id"] for r in data] == [f"q{i}" for i in range(6)]
            assert all(r["regeneration"]["model"] == "tiny-target" for r in data)
            assert all(r["regeneration"]["turns"][0]["endpoint"] == url for r in data)
            assert all(r["messages"][1]["content"] != "old" or r["regeneration"]["turns"][0]["completion_tokens"]
                       for r in data)

            # capture still answers with the right shapes after generation used the same model
            status, ans = http(f"{url}/capture", {"request_id": "after-chat", "input_ids": [3, 1, 4, 1, 5]})
            assert status == 200 and ans["records"]["hidden"]["shape"] == [5, 2 * 32], ans
        finally:
            kill_session(server)
