"""The kernel clients' block I/O driver against fio on the same nvme-rdma namespace
(clients/kernel/bench_blockio.py): writes per second of each and their ratio."""

from __future__ import annotations

from harness.core.errors import RxePowerError
from harness.run.bench.record import BenchRecord, machine_load
from harness.topology.config import TopologyConfig


def measure_blockio(bench: BenchRecord, cfg: TopologyConfig) -> bool:
    """Our O_DIRECT driver (depth threads, unpaced, 4 KiB writes) and then fio (libaio,
    the same depth and bytes); a harness error is recorded and fails the section."""
    from clients.kernel.bench_blockio import measure

    try:
        rec = measure(cfg, bench.spec.blockio_count, bench.spec.blockio_depth)
    except RxePowerError as exc:
        bench.record("blockio", {"error": str(exc), "load": machine_load()})
        bench.log(f"\nblockio: not measured: {exc}")
        return False
    rec["load"] = machine_load()
    bench.record("blockio", rec)
    d, f = rec["driver"], rec["fio"]
    bench.log(f"\nblockio ({rec['device']}, {rec['count']} x 4 KiB writes, depth "
              f"{rec['depth']}): our driver {d['iops']:.0f}/s (mean {d['lat_ms_mean']} ms), "
              f"fio {f['iops']:.0f}/s (mean {f['lat_ms_mean']:.3f} ms): ratio "
              f"{rec['ratio_iops']}")
    return bool(d["ios"] == rec["count"])
