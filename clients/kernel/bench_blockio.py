"""Benchmark the block I/O driver against fio on the same nvme-rdma namespace.

    python -m clients.kernel.bench_blockio [--count 2000] [--depth 4]

Sets up the target and the controller (recorded, removed at the end), writes `count`
4 KiB O_DIRECT blocks with our driver (depth threads, unpaced, writes only), then with
fio (libaio, iodepth=depth, the same bytes), and prints both rates and their ratio as
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Any

from clients.kernel.blockio import BlockDriver, DriverSpec
from clients.kernel.nvme_host import HostConfig, NvmeHost, parse_policy
from clients.kernel.nvmet_target import NvmetTarget, TargetConfig
from harness.core.errors import BoundExceeded, RxePowerError
from harness.topology import lifecycle as topology
from harness.topology.config import TopologyConfig

FIO_TIMEOUT_S = 300.0


def run_fio(device: str, count: int, depth: int, bs: int = 4096) -> dict[str, Any]:
    argv = ["fio", "--name=rxpw", f"--filename={device}", "--rw=write", f"--bs={bs}",
            "--direct=1", "--ioengine=libaio", f"--iodepth={depth}",
            f"--size={count * bs}", "--output-format=json"]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=FIO_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BoundExceeded("fio", "FIO_TIMEOUT_S", FIO_TIMEOUT_S, "fio had not exited") \
            from None
    if res.returncode != 0:
        raise RxePowerError(f"fio failed: {res.stderr.strip()}", "see fio's message")
    job = json.loads(res.stdout)["jobs"][0]["write"]
    return {"ios": job["total_ios"], "iops": job["iops"], "lat_ms_mean":
            job["clat_ns"]["mean"] / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_blockio")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--depth", type=int, default=4)
    args = ap.parse_args(argv)
    cfg = TopologyConfig.from_settings()
    _topo, built = topology.setup(cfg, log=lambda m: None)
    target = NvmetTarget(TargetConfig(addr=cfg.peer_addr, size_mib=64, tag="b"))
    host = None
    try:
        target.setup()
        host = NvmeHost(HostConfig(target.cfg.nqn, cfg.peer_addr, target.cfg.trsvcid,
                                   cfg.local_addr, parse_policy("nvme-rdma:fast-fail")))
        host.connect()
        assert host.block_device is not None
        drv = BlockDriver(host.block_device, DriverSpec(args.count, args.depth, 0.0,
                                                        read_every=0))
        t0 = time.monotonic()
        drv.start()
        recs = drv.finish()
        ours_s = time.monotonic() - t0
        drv.close()
        ok = sum(r.errno is None and r.done_ns is not None for r in recs)
        lat = sorted((r.done_ns - r.submit_ns) / 1e6 for r in recs if r.done_ns)
        fio = run_fio(str(host.block_device), args.count, args.depth)
        ours = {"ios": ok, "iops": ok / ours_s, "lat_ms_mean": sum(lat) / len(lat)}
        print(json.dumps({"device": str(host.block_device), "depth": args.depth,
                          "driver": ours, "fio": fio,
                          "ratio_iops": round(ours["iops"] / fio["iops"], 3)}))
    finally:
        if host is not None:
            host.disconnect()
        target.teardown()
        if built:
            topology.teardown(log=lambda m: None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
