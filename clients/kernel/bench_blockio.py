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
import time
from collections.abc import Callable
from typing import Any

from clients.kernel.blockio import BlockDriver, DriverSpec
from clients.kernel.nvme_host import HostConfig, NvmeHost, parse_policy
from clients.kernel.nvmet_target import NvmetTarget, TargetConfig
from harness.core.errors import RxePowerError
from harness.core.proc import run_bounded
from harness.topology import lifecycle
from harness.topology.config import TopologyConfig

FIO_TIMEOUT_S = 300.0


def run_fio(device: str, count: int, depth: int, bs: int = 4096) -> dict[str, Any]:
    argv = ["fio", "--name=rxpw", f"--filename={device}", "--rw=write", f"--bs={bs}",
            "--direct=1", "--ioengine=libaio", f"--iodepth={depth}",
            f"--size={count * bs}", "--output-format=json"]
    res = run_bounded(argv, FIO_TIMEOUT_S, step="fio", bound_name="FIO_TIMEOUT_S",
                      outstanding=f"fio writing {count} blocks to {device} had not exited")
    if res.returncode != 0:
        raise RxePowerError(f"fio failed: {res.stderr.strip()}", "see fio's message")
    job = json.loads(res.stdout)["jobs"][0]["write"]
    return {"ios": job["total_ios"], "iops": job["iops"], "lat_ms_mean":
            job["clat_ns"]["mean"] / 1e6}


def measure(cfg: TopologyConfig, count: int, depth: int,
            before_fio: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Our driver, then fio, on one nvme-rdma namespace (the topology must be up): the
    target and the controller are recorded in the state file and removed at the end.
    `before_fio` runs between the two (a caller's bound check: it may raise)."""
    target = NvmetTarget(TargetConfig(addr=cfg.peer_addr, size_mib=64, tag="b"))
    host = None
    try:
        target.setup()
        host = NvmeHost(HostConfig(target.cfg.nqn, cfg.peer_addr, target.cfg.trsvcid,
                                   cfg.local_addr, parse_policy("nvme-rdma:fast-fail")))
        host.connect()
        if host.block_device is None:
            raise RxePowerError("the nvme-rdma controller has no namespace block device",
                                "read dmesg; run `rxe-power doctor`")
        drv = BlockDriver(host.block_device, DriverSpec(count, depth, 0.0, read_every=0))
        t0 = time.monotonic()
        drv.start()
        recs = drv.finish()
        ours_s = time.monotonic() - t0
        drv.close()
        ok = sum(r.errno is None and r.done_ns is not None for r in recs)
        lat = sorted((r.done_ns - r.submit_ns) / 1e6 for r in recs if r.done_ns)
        before_fio()
        fio = run_fio(str(host.block_device), count, depth)
        ours = {"ios": ok, "iops": round(ok / ours_s, 1),
                "lat_ms_mean": round(sum(lat) / len(lat), 3) if lat else None}
        return {"device": str(host.block_device), "count": count, "depth": depth,
                "driver": ours, "fio": fio,
                "ratio_iops": round(ours["iops"] / fio["iops"], 3) if fio["iops"] else None}
    finally:
        if host is not None:
            host.disconnect()
        target.teardown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_blockio")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--depth", type=int, default=4)
    args = ap.parse_args(argv)
    cfg = TopologyConfig.from_settings()
    _topo, built = lifecycle.setup(cfg)
    try:
        print(json.dumps(measure(cfg, args.count, args.depth)))
    finally:
        if built:
            lifecycle.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
