"""The kernel clients' block I/O driver against fio on the same nvme-rdma namespace
(clients/kernel/bench_blockio.py): writes per second of each and their ratio."""

from __future__ import annotations

from harness.core.errors import BoundExceeded, RxePowerError
from harness.run.bench.record import BenchRecord, machine_load
from harness.topology.config import TopologyConfig


def measure_blockio(bench: BenchRecord, cfg: TopologyConfig) -> bool:
    """Our O_DIRECT driver (depth threads, unpaced, 4 KiB writes) and then fio (libaio,
    the same depth and bytes); a harness error is recorded and fails the section, and a
    run in which any write failed is FAILED with no ratio. Bounded by
    BLOCKIO_SECTION_TIMEOUT_S, checked between our driver and fio (each step is held to
    its own bounds: the nvme target and host set-up, the driver's, FIO_TIMEOUT_S)."""
    from clients.kernel.bench_blockio import measure

    bound = bench.spec.section_bound("blockio")
    try:
        rec = measure(cfg, bench.spec.blockio_count, bench.spec.blockio_depth,
                      lambda: bound.check("fio, not started (our driver is done)"))
    except BoundExceeded:
        raise  # the section's own bound: run_section reports it
    except RxePowerError as exc:
        bench.record("blockio", {"error": str(exc), "load": machine_load()})
        bench.out(f"\nblockio: not measured: {exc}")
        return False
    rec["load"] = machine_load()
    d, f = rec["driver"], rec["fio"]
    short = [f"{who} completed {r['ios']} of {rec['count']} writes" for who, r in
             (("our driver", d), ("fio", f)) if r["ios"] != rec["count"]]
    if short:
        rec["failed"], rec["ratio_iops"] = "; ".join(short), None
        bench.record("blockio", rec)
        bench.out(f"\nblockio ({rec['device']}): FAILED (no figures): {rec['failed']}")
        return False
    bench.record("blockio", rec)
    bench.out(f"\nblockio ({rec['device']}, {rec['count']} x 4 KiB writes, depth "
              f"{rec['depth']}): our driver {d['iops']:.0f}/s (mean {d['lat_ms_mean']} ms), "
              f"fio {f['iops']:.0f}/s (mean {f['lat_ms_mean']:.3f} ms): ratio "
              f"{rec['ratio_iops']}")
    return True
