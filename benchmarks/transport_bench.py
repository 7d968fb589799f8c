"""Mooncake transport throughput for one large record, next to a plain TCP socket copy of the same bytes.

    python benchmarks/transport_bench.py --size-mb 100 --repeats 5

Starts a real `mooncake_master` on 127.0.0.1. The writer (this process) contributes the store's
memory and `put`s one record (a bf16 tensor of --size-mb MB); a reader in a separate process
(`batch_get_into` a registered buffer, then delete) fetches it: the path between a capture server
and a trainer rank. The baseline, measured in the same run: the same bytes sent over a TCP
loopback socket from this process to the reader process (`sendall` -> `recv_into` a preallocated
buffer). Reported: median GB/s of put, get, put+get (bytes / (put + get) seconds), the socket copy,
and the ratio put+get / socket.

`--mode tcp` (default) sets MC_STORE_MEMCPY=0 so Mooncake moves the bytes with its TCP transport
even on one host; `--mode memcpy` lets it use its same-host memcpy shortcut (what it picks on its own
when no RDMA device is there); `--mode both` runs both.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


def _reader(conn: Connection, cfg_json: str, size: int, sock_port: int) -> None:
    import torch
    from dspark_trainer.config.transport import TransportConfig
    from dspark_trainer.transport import MooncakeTransport, RecordInfo

    cfg = TransportConfig.model_validate_json(cfg_json)
    transport = MooncakeTransport(cfg, segment_size=0, name="bench-reader").connect()
    pool = transport.new_buffer_pool(max_buffers=2)
    sock_buf = torch.empty(size, dtype=torch.uint8)
    view = memoryview(sock_buf.numpy())
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg == "stop":
            break
        if msg == "socket":
            with socket.create_connection(("127.0.0.1", sock_port)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                got = 0
                t0 = time.perf_counter()
                while got < size:
                    n = s.recv_into(view[got:], size - got)
                    if n == 0:
                        raise RuntimeError("socket closed early")
                    got += n
                conn.send(time.perf_counter() - t0)
            continue
        info = RecordInfo.from_json(json.loads(msg))
        t0 = time.perf_counter()
        (rec,) = transport.get_records([info], pool)
        get_s = time.perf_counter() - t0
        ok = int(rec.tensors["hidden"][0, 0].item() == 1.0)
        rec.release()
        t0 = time.perf_counter()
        transport.delete_records([info.base], fields=["hidden"])
        conn.send((get_s, time.perf_counter() - t0, ok))
    pool.close()
    transport.close()


def run_mode(mode: str, size_mb: int, repeats: int) -> dict[str, Any]:
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test harness
    from dspark_trainer.transport import MooncakeTransport, make_base_key
    from harness.mooncake import MooncakeMaster, free_port

    size = size_mb * 1000 * 1000
    cols = 4096
    rows = size // (2 * cols)
    tensor = torch.ones(rows, cols, dtype=torch.bfloat16)
    nbytes = tensor.numel() * 2
    results: dict[str, list[float]] = {"put": [], "get": [], "delete": [], "socket": []}
    with MooncakeMaster() as master:
        cfg = master.transport_config(global_segment_size=4 * nbytes + (64 << 20), local_buffer_size=64 << 20)
        writer = MooncakeTransport(cfg, name="bench-writer").connect()
        port = free_port()
        srv = socket.create_server(("127.0.0.1", port))
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_reader, args=(child, cfg.model_dump_json(), nbytes, port))
        proc.start()
        assert parent.recv() == "ready"
        payload = memoryview(tensor.view(torch.uint8).flatten().numpy())
        try:
            for i in range(repeats + 1):  # the first round warms up (page faults, connections)
                base = make_base_key(f"bench-{i}")
                t0 = time.perf_counter()
                (res,) = writer.put_records([(base, {"hidden": tensor})])
                put_s = time.perf_counter() - t0
                parent.send(json.dumps(res.info.to_json()))
                get_s, del_s, ok = parent.recv()
                assert ok, "the reader got wrong bytes"
                parent.send("socket")
                conn, _ = srv.accept()
                with conn:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                    t0 = time.perf_counter()
                    conn.sendall(payload)
                    send_s = time.perf_counter() - t0
                sock_s = max(send_s, parent.recv())
                if i == 0:
                    continue
                results["put"].append(put_s)
                results["get"].append(get_s)
                results["delete"].append(del_s)
                results["socket"].append(sock_s)
        finally:
            parent.send("stop")
            proc.join(60)
            srv.close()
            writer.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    gb = nbytes / 1e9
    out = {
        "mode": mode,
        "record_bytes": nbytes,
        "repeats": repeats,
        "put_GBps": gb / med["put"],
        "get_GBps": gb / med["get"],
        "put_plus_get_GBps": gb / (med["put"] + med["get"]),
        "socket_copy_GBps": gb / med["socket"],
        "delete_ms": med["delete"] * 1000,
    }
    out["ratio_put_plus_get_vs_socket"] = out["put_plus_get_GBps"] / out["socket_copy_GBps"]
    out["ratio_get_vs_socket"] = out["get_GBps"] / out["socket_copy_GBps"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=100, help="record size in MB (100)")
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds after one warm-up (5)")
    parser.add_argument("--mode", choices=["tcp", "memcpy", "both"], default="tcp")
    parser.add_argument("--json", action="store_true", help="print one JSON object per mode")
    args = parser.parse_args()
    if args.mode == "both":
        rc = 0
        for mode in ("tcp", "memcpy"):
            cmd = [sys.executable, __file__, "--size-mb", str(args.size_mb), "--repeats", str(args.repeats),
                   "--mode", mode] + (["--json"] if args.json else [])
            rc |= subprocess.call(cmd)
        return rc
    os.environ["MC_STORE_MEMCPY"] = "0" if args.mode == "tcp" else "1"
    os.environ.setdefault("GLOG_minloglevel", "2")
    r = run_mode(args.mode, args.size_mb, args.repeats)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"mode={r['mode']} record={r['record_bytes'] / 1e6:.0f} MB repeats={r['repeats']} (medians)")
        print(f"  mooncake put       {r['put_GBps']:7.2f} GB/s")
        print(f"  mooncake get       {r['get_GBps']:7.2f} GB/s")
        print(f"  mooncake put+get   {r['put_plus_get_GBps']:7.2f} GB/s   (delete {r['delete_ms']:.1f} ms)")
        print(f"  socket copy        {r['socket_copy_GBps']:7.2f} GB/s")
        print(f"  ratio put+get / socket = {r['ratio_put_plus_get_vs_socket']:.2f}; "
              f"get / socket = {r['ratio_get_vs_socket']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
