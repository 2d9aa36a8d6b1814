"""A real matrix run's results header names what made it: the kernel that ran it, the
rdma_rxe module (the file's sha256, the file checked to be the loaded module by its GNU
build-id), the removal mode the module gives, and (in the guest) the VM and its
accelerator; each checked here against the system itself, not against the collector's
own code.
Run it under both modules: `rxe-power test -- tests/rxe/test_provenance.py` (block) and
`... --removal disassociate`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from harness.core import settings
from harness.core.printer import RecordingPrinter
from harness.core.settings import Mode, RemovalMode
from harness.run.lanes import parse_policies
from harness.run.matrix import MatrixSpec, run_matrix
from harness.run.resultsfile import read_results
from harness.system.provenance import Accel
from harness.system.provenance_collect import collect
from harness.system.provenance_text import Recorded
from power.plan import Ordering

SYS_MODULE = Path("/sys/module/rdma_rxe")
OUR_VERSION_PREFIX = "rxe-power-disassociate-"  # MODULE_VERSION of ci/rxe_disassociate_patch.py


def dpkg_version(package: str) -> str | None:
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                         capture_output=True, text=True, timeout=30, check=False)
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def test_a_matrix_header_names_kernel_module_and_removal(rxe_config, rxe_topology,
                                                         tmp_path: Path) -> None:
    spec = MatrixSpec(("link-flap",), (Ordering.CLIENTS_FIRST,), parse_policies(("graceful",)),
                      count=20).validate()
    lines: list[str] = []
    assert run_matrix(spec, rxe_config, tmp_path,
                      out=RecordingPrinter(lines=lines)) == 0, lines
    head = read_results(tmp_path / "results.jsonl").provenance
    assert head.state is Recorded.YES, head.problem
    p = head.provenance
    assert p is not None
    print("\n".join(head.lines()))
    # the kernel that ran it, and its package
    assert p.kernel.release == os.uname().release
    assert p.kernel.tainted == int(Path("/proc/sys/kernel/tainted").read_text())
    assert p.kernel.package_version is not None
    assert p.kernel.package_version == dpkg_version(p.kernel.package or "")
    # the module: the hashed file is the loaded one (the same GNU build-id note, taken out
    # of the file by objcopy), its hash is right
    assert p.module.path and p.module.sha256 and p.module.file_matches_loaded is True
    assert hashlib.sha256(Path(p.module.path).read_bytes()).hexdigest() == p.module.sha256
    loaded_note = (SYS_MODULE / "notes" / ".note.gnu.build-id").read_bytes()
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.note.gnu.build-id",
                    p.module.path, str(tmp_path / "note")], timeout=30, check=True)
    assert (tmp_path / "note").read_bytes() == loaded_note
    assert p.module.build_id == loaded_note[16:].hex()  # after namesz, descsz, type, "GNU"
    srcversion = SYS_MODULE / "srcversion"  # only a module with MODULE_VERSION has one
    assert p.module.srcversion == (srcversion.read_text().strip() if srcversion.exists()
                                   else None)
    # the removal mode: ours carries our MODULE_VERSION, the distribution's none
    version_file = SYS_MODULE / "version"
    ours = version_file.exists() and version_file.read_text().startswith(OUR_VERSION_PREFIX)
    assert p.removal is (RemovalMode.DISASSOCIATE if ours else RemovalMode.BLOCK)
    assert p.module.taint == (SYS_MODULE / "taint").read_text().strip()
    assert (p.module.source_version is not None) and (p.module.patch is not None) is ours
    # where it ran
    if settings.in_vm():
        assert p.mode is Mode.VM and p.host is not None
        assert p.accel in (Accel.TCG, Accel.KVM), (p.accel, p.accel_reason)
    else:
        assert p.mode is Mode.NATIVE and p.accel is Accel.NONE
    assert p.machine.cpus == os.cpu_count()
    assert p.packages.rdma_core == dpkg_version("rdma-core")
    assert p.packages.perftest == dpkg_version("perftest")
    # shown at the top of the table
    table = (tmp_path / "table.txt").read_text()
    assert table.startswith(f"provenance: mode {p.mode}") and p.module.sha256 in table
    t0 = time.monotonic()
    again = collect()  # what a run session pays for it, printed (not a timed assertion)
    print(f"provenance collected in {(time.monotonic() - t0) * 1000:.0f} ms")
    assert again.module.sha256 == p.module.sha256
