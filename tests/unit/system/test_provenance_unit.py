"""A run's provenance: collected from recorded command output and files (dpkg-query,
/proc/sys/kernel/tainted, /proc/meminfo, modinfo, /sys/module/rdma_rxe, our build's stamp,
git), handed over from the host (RXE_POWER_LAUNCH, RXE_POWER_VM_FACTS), and written in a
results header and read back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.core.errors import OsCallError
from harness.core.settings import Mode, RemovalMode
from harness.run.resultsfile import RecordKind, ResultsWriter, read_results
from harness.system.command import CmdResult
from harness.system.elf_notes import build_id_note, note_build_id
from harness.system.provenance import (
    Accel,
    FaultModel,
    Machine,
    Provenance,
    ProvenanceError,
    SourceTree,
    taint_letters,
)
from harness.system.provenance_collect import (
    LaunchFacts,
    Sources,
    VmFacts,
    collect,
    parse_dpkg,
    parse_loadavg_1m,
    parse_meminfo_mib,
    parse_stamp,
    parse_tainted,
    vm_facts_json,
)
from harness.system.provenance_text import Recorded, describe, differing_fields
from harness.system.rxe_module import Loaded

RELEASE = "6.1.0-57-amd64"
# recorded on the project's Debian 12 host: `dpkg-query -W -f DPKG_FORMAT rdma-core
# ibverbs-providers perftest linux-modules-extra-R linux-modules-R linux-image-R
# linux-image-R-unsigned linux-image-unsigned-R` (exit 1: three names unknown to dpkg)
DPKG_OUT = ("ibverbs-providers\t44.0-2\tii \n"
            f"linux-image-{RELEASE}\t6.1.192-3\tii \n"
            f"linux-image-{RELEASE}-unsigned\t\tun \n"
            "perftest\t4.5+0.17-1\tii \n"
            "rdma-core\t44.0-2\tii \n")
DPKG_ERR = (f"dpkg-query: no packages found matching linux-modules-extra-{RELEASE}\n"
            f"dpkg-query: no packages found matching linux-modules-{RELEASE}\n")
MEMINFO = "MemTotal:        2030748 kB\nMemFree:         1569320 kB\nMemAvailable:    1651400 kB\n"
STAMP = "6.1.192-3 dbbaf6816dfeadab\n"  # /var/lib/rxe-power/rxe-disassociate/R/stamp
OURS_SRCVERSION = "5D2A6F7E0C1B3E2F4A9C8D1"
COMMIT = "42de5b1909e214779bf84d9a1fb2c3a7ea63a603"
OE = 1 << 12 | 1 << 13  # /proc/sys/kernel/tainted after our module loaded: 12288


# the GNU build-id note of Debian 12's rdma_rxe.ko for 6.1.0-57-amd64, as
# /sys/module/rdma_rxe/notes/.note.gnu.build-id holds it (readelf -n: e50248c2...8947)
STOCK_NOTE = bytes.fromhex("040000001400000003000000474e5500"
                           "e50248c29f0bbeda99f38467b5638f7141878947")


def tiny_ko(note: bytes, body: bytes = b"") -> bytes:
    """A minimal ELF64 little-endian file: sections null, .shstrtab, .note.gnu.build-id."""
    import struct

    names = b"\0.shstrtab\0.note.gnu.build-id\0"
    strtab_off = 64
    note_off = strtab_off + len(names)
    shoff = note_off + len(note) + len(body)
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", head, 0x28, shoff)
    struct.pack_into("<HHH", head, 0x3A, 64, 3, 1)
    sections = bytes(64) + struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, strtab_off, len(names),
                                       0, 0, 1, 0) \
        + struct.pack("<IIQQQQIIQQ", 11, 7, 2, 0, note_off, len(note), 0, 0, 4, 0)
    return bytes(head) + names + note + body + sections


class Recorder:
    """A `run` that answers from recorded output and keeps every argv it was asked."""

    def __init__(self, answers: dict[str, CmdResult | Exception]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    def __call__(self, argv: list[str]) -> CmdResult:
        self.asked.append(argv)
        key = next((k for k in self.answers if " ".join(argv).startswith(k)
                    or f" {k}" in " ".join(argv)), None)
        if key is None:
            raise AssertionError(f"unexpected command {argv}")
        ans = self.answers[key]
        if isinstance(ans, Exception):
            raise ans
        return ans


def ok(stdout: str, rc: int = 0, stderr: str = "") -> CmdResult:
    return CmdResult((), rc, stdout, stderr)


def system(tmp_path: Path, *, loaded: str | None, tainted: str = f"{OE}\n",
           ours: bool = True, loaded_note: bytes | None = None) -> tuple[Path, Path, Path]:
    """A recorded /sys/module/rdma_rxe (`loaded`: ours, stock or None), our build's cache
    and the stock module file; returns (sys_module, cache_root, stock .ko)."""
    sysmod = tmp_path / "sys" / "rdma_rxe"
    if loaded is not None:
        sysmod.mkdir(parents=True)
        if loaded == "ours":
            (sysmod / "version").write_text("rxe-power-disassociate-pm\n")
            (sysmod / "srcversion").write_text(OURS_SRCVERSION + "\n")
            (sysmod / "taint").write_text("OE\n")
        else:  # Debian's in-tree module: no version, no srcversion
            (sysmod / "taint").write_text("\n")
        if loaded_note is not None:
            (sysmod / "notes").mkdir()
            (sysmod / "notes" / ".note.gnu.build-id").write_bytes(loaded_note)
    cache = tmp_path / "cache"
    if ours:
        (cache / RELEASE / "pm").mkdir(parents=True)
        (cache / RELEASE / "pm" / "rdma_rxe.ko").write_bytes(b"\x7fELF our rdma_rxe")
        (cache / RELEASE / "pm" / "stamp").write_text(STAMP)
    stock = tmp_path / "lib" / "rdma_rxe.ko"
    stock.parent.mkdir(parents=True)
    stock.write_bytes(tiny_ko(STOCK_NOTE, b"the distribution's rdma_rxe"))
    (tmp_path / "tainted").write_text(tainted)
    (tmp_path / "meminfo").write_text(MEMINFO)
    return sysmod, cache, stock


def recorded_run(stock: Path, cache: Path,
                 over: dict[str, CmdResult | Exception] | None = None) -> Recorder:
    answers: dict[str, CmdResult | Exception] = {
        "dpkg-query": ok(DPKG_OUT, 1, DPKG_ERR),
        f"modinfo -F srcversion {cache}": ok(OURS_SRCVERSION + "\n"),
        "modinfo -n rdma_rxe": ok(f"{stock}\n"),
        f"modinfo -F srcversion {stock}": ok("\n"),  # an in-tree module has none
        "rev-parse --verify HEAD": ok(COMMIT + "\n"),
        "status --porcelain": ok(" M README.md\n"),
    }
    answers.update(over or {})
    return Recorder(answers)


def sources(tmp_path: Path, run: Callable[[list[str]], CmdResult], sysmod: Path,
            cache: Path) -> Sources:
    return Sources(run=run, tainted=tmp_path / "tainted", meminfo=tmp_path / "meminfo",
                   sys_module=sysmod, cache_root=cache, repo=tmp_path, release=RELEASE,
                   cpus=2)


# --- parsers of recorded output ------------------------------------------------------------------


def test_dpkg_query_output_is_read_by_field() -> None:
    got = parse_dpkg(DPKG_OUT)
    assert got == {"ibverbs-providers": "44.0-2", f"linux-image-{RELEASE}": "6.1.192-3",
                   f"linux-image-{RELEASE}-unsigned": None,  # known to dpkg, not installed
                   "perftest": "4.5+0.17-1", "rdma-core": "44.0-2"}
    assert parse_dpkg("rdma-core\t44.0-2\trc \n") == {"rdma-core": None}  # removed, config
    assert parse_dpkg("garbage line\n\n") == {}


def test_kernel_taint_letters() -> None:
    assert parse_tainted(f"{OE}\n") == OE and taint_letters(OE) == "OE"
    assert taint_letters(0) == "" and taint_letters(-1) == "?"
    assert taint_letters(1 << 9 | 1) == "PW"  # proprietary, then a WARNING
    assert taint_letters(1 << 20 | 1 << 12) == "O+0x100000"  # a bit the table does not name
    with pytest.raises(ValueError):
        parse_tainted("OE\n")


def test_meminfo_and_stamp() -> None:
    assert parse_meminfo_mib(MEMINFO) == 1983
    assert parse_meminfo_mib("MemFree: 1 kB\n") is None
    assert parse_meminfo_mib("MemTotal: 12 MB\n") is None  # only kB is the kernel's unit
    assert parse_stamp(STAMP) == ("6.1.192-3", "dbbaf6816dfeadab")
    assert parse_stamp("6.1.192-3\n") is None


# --- the collection ---------------------------------------------------------------------------


def test_our_module_in_a_guest(tmp_path: Path) -> None:
    """Our disassociate build loaded in the guest: the cached .ko's hash, its source from the
    build's stamp, removal disassociate; mode, accelerator, host and source tree as the host
    handed them over (no git is run in the guest)."""
    sysmod, cache, stock = system(tmp_path, loaded="ours")
    run = recorded_run(stock, cache)
    launch = LaunchFacts(Mode.VM, "the running kernel has no rdma_rxe: using the VM",
                         SourceTree(COMMIT, False), "rxe-power matrix --policy graceful",
                         "default: our rdma_rxe is built")
    environ = {"RXE_POWER_IN_VM": "1", "RXE_POWER_REMOVAL": "disassociate",
               "RXE_POWER_LAUNCH": json.dumps(launch.to_json()),
               "RXE_POWER_VM_FACTS": json.dumps(vm_facts_json(
                   "tcg", "KVM hangs here", Sources(meminfo=tmp_path / "meminfo", cpus=8,
                                                    release="6.18.44")))}
    p = collect(sources(tmp_path, run, sysmod, cache), environ,
                faults=(FaultModel.USERSPACE_REMOVAL, FaultModel.MLX5_ORDER,
                        FaultModel.USERSPACE_REMOVAL))
    assert p.faults == (FaultModel.USERSPACE_REMOVAL, FaultModel.MLX5_ORDER)  # each once
    assert (p.mode, p.accel, p.accel_reason) == (Mode.VM, Accel.TCG, "KVM hangs here")
    assert p.mode_reason == launch.mode_reason and p.removal_reason == launch.removal_reason
    assert p.host is not None and (p.host.cpus, p.host.kernel) == (8, "6.18.44")
    assert (p.machine.cpus, p.machine.memory_mib) == (2, 1983)
    m = p.module
    assert m.kind is Loaded.OURS and p.removal is RemovalMode.DISASSOCIATE
    assert m.sha256 == hashlib.sha256(b"\x7fELF our rdma_rxe").hexdigest()
    assert m.path == str(cache / RELEASE / "pm" / "rdma_rxe.ko") and m.file_matches_loaded is True
    assert (m.source_package, m.source_version, m.patch) == ("linux-source-6.1", "6.1.192-3",
                                                             "dbbaf6816dfeadab")
    assert m.taint == "OE" and p.kernel.taint_flags == "OE"
    assert (p.kernel.package, p.kernel.package_version) == (f"linux-image-{RELEASE}",
                                                            "6.1.192-3")
    assert (p.packages.rdma_core, p.packages.ibverbs_providers, p.packages.perftest) == (
        "44.0-2", "44.0-2", "4.5+0.17-1")
    assert p.removal_requested is RemovalMode.DISASSOCIATE
    assert p.tree.commit == COMMIT and p.tree.dirty is False
    assert not [a for a in run.asked if a[0] == "git"]  # the host's tree, not the guest's
    assert p.problems == ()
    text = "\n".join(describe(p))
    assert p.command_line == "rxe-power matrix --policy graceful"
    for want in ("mode vm", "accel tcg", RELEASE, "6.1.192-3", m.sha256, "removal disassociate",
                 "taint OE", "perftest 4.5+0.17-1", COMMIT[:12], "same-kernel",
                 "userspace-removal"):
        assert want in text, want


def test_stock_module_natively(tmp_path: Path) -> None:
    """The distribution's module: the file modinfo names, hashed, and the same build-id as
    the loaded module (it has no srcversion); its package; removal block; the tree read
    with git here (dirty: README.md modified)."""
    sysmod, cache, stock = system(tmp_path, loaded="stock", tainted="0\n", ours=False,
                                  loaded_note=STOCK_NOTE)
    run = recorded_run(stock, cache)
    p = collect(sources(tmp_path, run, sysmod, cache), {})
    assert (p.mode, p.accel, p.host) == (Mode.NATIVE, Accel.NONE, None)
    m = p.module
    assert m.kind is Loaded.STOCK and p.removal is RemovalMode.BLOCK
    assert m.path == str(stock) and m.file_matches_loaded is True and m.srcversion is None
    assert m.build_id == "e50248c29f0bbeda99f38467b5638f7141878947"
    assert m.sha256 == hashlib.sha256(stock.read_bytes()).hexdigest()
    assert (m.source_package, m.source_version) == (f"linux-image-{RELEASE}", "6.1.192-3")
    assert p.kernel.tainted == 0 and p.kernel.taint_flags == ""
    assert p.tree.commit == COMMIT and p.tree.dirty is True
    assert p.removal_requested is RemovalMode.BLOCK and "built-in default" in p.removal_reason


def test_a_module_file_that_is_not_the_loaded_one_is_said(tmp_path: Path) -> None:
    """Another build-id loaded than the file's (a module file replaced after the load);
    and, without notes, another srcversion (ours rebuilt since it was loaded)."""
    other = STOCK_NOTE[:-1] + b"\x00"
    sysmod, cache, stock = system(tmp_path, loaded="stock", ours=False, loaded_note=other)
    p = collect(sources(tmp_path, recorded_run(stock, cache), sysmod, cache), {})
    assert p.module.file_matches_loaded is False
    assert "NOT the loaded one" in "\n".join(describe(p))
    sysmod, cache, stock = system(tmp_path / "b", loaded="ours")
    (sysmod / "srcversion").write_text("FFFF\n")  # loaded: an older build of ours
    run = recorded_run(stock, cache, {f"modinfo -F srcversion {cache}": ok("FFFF\n")})
    p = collect(sources(tmp_path / "b", run, sysmod, cache), {})
    assert p.module.kind is Loaded.OURS and p.module.file_matches_loaded is True
    run = recorded_run(stock, cache, {f"modinfo -F srcversion {cache}": ok("EEEE\n")})
    p = collect(sources(tmp_path / "b", run, sysmod, cache), {})
    assert p.module.kind is Loaded.OTHER and p.removal is None  # not the cached build


def test_elf_build_id_notes() -> None:
    assert build_id_note(tiny_ko(STOCK_NOTE)) == STOCK_NOTE
    assert note_build_id(STOCK_NOTE) == "e50248c29f0bbeda99f38467b5638f7141878947"
    elf = tiny_ko(STOCK_NOTE)
    assert build_id_note(elf[:100]) is None  # cut: the section headers are gone
    assert build_id_note(b"\x7fELF\x01\x01" + bytes(60)) is None  # 32-bit: not a .ko here
    assert build_id_note(b"not an ELF file at all, but long enough to be one" * 2) is None
    assert note_build_id(STOCK_NOTE[:20]) is None and note_build_id(b"") is None


def test_what_cannot_be_read_is_named_not_fatal(tmp_path: Path) -> None:
    """No dpkg-query (ENOENT), git refusing the tree, an unreadable taint file, no module
    loaded: the record says unknown for each and names why."""
    sysmod, cache, stock = system(tmp_path, loaded=None, tainted="junk\n")
    run = recorded_run(stock, cache, {
        "dpkg-query": OsCallError("cannot run 'dpkg-query'", 2),
        "rev-parse --verify HEAD": ok("", 128, "fatal: detected dubious ownership in "
                                      "repository")})
    p = collect(sources(tmp_path, run, sysmod, cache), {})
    assert p.module.kind is Loaded.NONE and p.removal is None and p.module.sha256 is None
    assert p.packages.rdma_core is None and p.kernel.package is None
    assert p.kernel.tainted == -1 and p.kernel.taint_flags == "?"
    assert p.tree.commit is None and "dubious ownership" in p.tree.problem
    problems = "\n".join(p.problems)
    assert "ENOENT" in problems and "No such file or directory" in problems
    assert "tainted" in problems and "junk" in problems
    text = "\n".join(describe(p))
    assert "rdma_rxe not loaded" in text and "tree unknown" in text and "not read:" in text


def test_a_bad_handover_is_a_problem_not_a_lie(tmp_path: Path) -> None:
    """In a guest whose RXE_POWER_VM_FACTS names no known accelerator: accel unknown, and
    why; a launch record of the other mode does not give its reason to this one."""
    sysmod, cache, stock = system(tmp_path, loaded="ours")
    launch = LaunchFacts(Mode.NATIVE, "rdma_rxe is loaded", SourceTree(COMMIT, False))
    environ = {"RXE_POWER_IN_VM": "1", "RXE_POWER_LAUNCH": json.dumps(launch.to_json()),
               "RXE_POWER_VM_FACTS": json.dumps({"accel": "hvf", "accel_reason": "",
                                                 "host": {"cpus": 1, "memory_mib": None,
                                                          "kernel": ""}})}
    p = collect(sources(tmp_path, recorded_run(stock, cache), sysmod, cache), environ)
    assert p.mode is Mode.VM and p.accel is Accel.UNKNOWN and p.host is None
    assert p.mode_reason != launch.mode_reason
    assert any("RXE_POWER_VM_FACTS.accel is 'hvf'" in x for x in p.problems)


def test_handover_records_round_trip() -> None:
    facts = vm_facts_json("kvm", "the probe booted", Sources(cpus=4))
    vm = VmFacts.from_json(json.loads(json.dumps(facts)))
    assert vm.accel is Accel.KVM and vm.host.cpus == 4
    launch = LaunchFacts(Mode.VM, "why", SourceTree(COMMIT, True), "rxe-power run",
                         "removal why")
    assert LaunchFacts.from_json(json.loads(json.dumps(launch.to_json()))) == launch


# --- the header ------------------------------------------------------------------------------


def a_provenance(tmp_path: Path, **change: object) -> Provenance:
    sysmod, cache, stock = system(tmp_path / "p", loaded="ours")
    p = collect(sources(tmp_path / "p", recorded_run(stock, cache), sysmod, cache),
                {"RXE_POWER_REMOVAL": "disassociate"})
    return dataclasses.replace(p, **change)  # type: ignore[arg-type]


def test_header_round_trip(tmp_path: Path) -> None:
    p = a_provenance(tmp_path)
    path = tmp_path / "results.jsonl"
    with ResultsWriter(path, "matrix", {"count": 1}, provenance=p) as out:
        out.write(RecordKind.SUMMARY, {"rows": 0})
    back = read_results(path).provenance
    assert back.state is Recorded.YES and back.provenance == p
    assert back.lines() == describe(p)


def test_a_header_without_provenance_or_with_a_bad_one(tmp_path: Path,
                                                       data_dir: Path) -> None:
    old = read_results(data_dir / "matrix-standby-linkflap.jsonl").provenance
    assert old.state is Recorded.NO and old.provenance is None
    assert old.lines() == ["provenance: not recorded (a results file written before "
                           "rxe-power recorded it)"]
    d = a_provenance(tmp_path).to_json()
    d["mode"] = "auto"
    del d["kernel"]["release"]
    for bad, field in ((d, "provenance.mode is auto"),
                       ({**d, "mode": "vm"}, "provenance.kernel.release is missing"),
                       ({**d, "schema": 9}, "provenance schema 9")):
        line = {"schema": 2, "kind": "header", "command": "matrix", "provenance": bad}
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(line) + "\n")
        got = read_results(path).provenance
        assert got.state is Recorded.UNREADABLE and field in got.problem, got.problem
        assert got.lines()[0].startswith("provenance: unreadable")


def test_the_load_at_the_start_is_kept_shown_and_not_compared(tmp_path: Path) -> None:
    """A run beside a CPU hog says so (the host's 1-minute load at its start); shards of one
    run at other loads are still one provenance; a file written before the field reads None;
    a malformed /proc/loadavg or record is caught."""
    assert parse_loadavg_1m("2.07 1.50 0.90 3/456 7890\n") == 2.07
    for bad in ("", "x 1 2", "-1 0 0", "nan 0 0"):
        assert parse_loadavg_1m(bad) is None, bad
    p = dataclasses.replace(a_provenance(tmp_path), host=Machine(2, 24105, "6.18", 0.1))
    busy = dataclasses.replace(p, host=Machine(2, 24105, "6.18", 3.5))
    assert differing_fields([p, busy]) == {}
    assert "load 3.50 at the start" in describe(busy)[0]
    assert Provenance.from_json(busy.to_json()).host == busy.host
    d = busy.to_json()
    del d["host"]["load_1m"]
    assert Provenance.from_json(d).host.load_1m is None  # type: ignore[union-attr]
    d["host"]["load_1m"] = "high"
    with pytest.raises(ProvenanceError, match="load_1m"):
        Provenance.from_json(d)


def test_only_identity_fields_are_compared(tmp_path: Path) -> None:
    p = a_provenance(tmp_path)
    same = dataclasses.replace(p, mode_reason="another reason", problems=("x",))
    assert differing_fields([p, same]) == {}
    other = dataclasses.replace(p, kernel=dataclasses.replace(p.kernel, tainted=OE | 1 << 9))
    assert differing_fields([p, other]) == {"kernel.tainted": [OE, OE | 1 << 9]}
    diff = differing_fields([p, None])
    assert diff["provenance"] == [None, "not recorded"] and diff["kernel.release"] == [
        RELEASE, None]


def test_a_schema_1_provenance_is_still_read(tmp_path: Path) -> None:
    """Schema 1 (before module.build_id) reads with build_id None; it differs from a
    schema 2 record in its schema."""
    d = a_provenance(tmp_path).to_json()
    d["schema"] = 1
    del d["module"]["build_id"]
    d["faults"] = "userspace-removal"  # one model per run before schema 4
    old = Provenance.from_json(d)
    assert old.schema == 1 and old.module.build_id is None
    assert old.faults == (FaultModel.USERSPACE_REMOVAL,)
    assert "schema" in differing_fields([old, a_provenance(tmp_path / "2")])
    path = (Path(__file__).parents[3] / "docs" / "measurements"
            / "matrix-standby-clients-first-graceful.jsonl")
    head = read_results(path).provenance
    assert head.state is Recorded.YES and head.provenance is not None
    assert head.provenance.schema == 1 and head.provenance.module.sha256


def test_the_runs_fault_models_are_a_list_read_strictly(tmp_path: Path) -> None:
    """Schema 4 records every fault model of the run's transitions; a value that is not a
    list, or a model this rxe-power does not know, is an error naming the field."""
    p = a_provenance(tmp_path)
    d = {**p.to_json(), "faults": ["mlx5-order", "userspace-removal"]}
    assert Provenance.from_json(d).faults == (FaultModel.MLX5_ORDER,
                                              FaultModel.USERSPACE_REMOVAL)
    assert Provenance.from_json({**d, "faults": []}).faults == ()
    assert "faults none (no transition)" in "\n".join(describe(Provenance.from_json(
        {**d, "faults": []})))
    for bad, said in (("mlx5-order", "provenance.faults is not a list"),
                      (["sleepy"], "provenance.faults is 'sleepy'")):
        with pytest.raises(ProvenanceError, match=said):
            Provenance.from_json({**d, "faults": bad})
