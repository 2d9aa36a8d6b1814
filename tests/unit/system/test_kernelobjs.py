"""Kernel-client objects: state-file field validation, sysfs parsing, policy presets,
cm_id connections (pure logic, on fake sysfs/configfs trees)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.kernel.nvme_host import PRESETS, NvmeOptions, namespace_block, parse_policy
from clients.kernel.route_guard import CmSample, connections, off_wire
from harness.core.errors import NotOurs, SettingError
from harness.system import kernelobjs as ko
from harness.system.rdma_cm_ids import parse_cm_ids
from harness.topology.config import TopologyConfig

NQN = "nqn.2026-11.org.rxe-power:rxpw-1234"


def test_parse_address() -> None:
    assert ko.parse_address("traddr=198.18.0.2,trsvcid=4420,host_traddr=198.18.0.1\n") == {
        "traddr": "198.18.0.2", "trsvcid": "4420", "host_traddr": "198.18.0.1"}


@pytest.mark.parametrize("nqn", ["../../etc", "nqn.2014-08.org.nvmexpress:uuid:x",
                                 NQN + "/../x", "", 5, None])
def test_foreign_or_hostile_nqn_refused(nqn: object) -> None:
    with pytest.raises(NotOurs):
        ko.valid_nqn(nqn)


def test_our_nqn_accepted() -> None:
    assert ko.valid_nqn(NQN) == NQN


@pytest.mark.parametrize("entry", [
    {"kind": "nvmet_port", "port": "1/../../x"},
    {"kind": "nvmet_port", "port": True},
    {"kind": "nullb", "name": "nullb0"},
    {"kind": "nvme_ctrl", "nqn": NQN, "traddr": "x; rm -rf /", "trsvcid": 4420,
     "host_traddr": "198.18.0.1"},
    {"kind": "route_prohibit", "dst": "198.18.0.2", "table": "main", "metric": 1},
])
def test_undo_refuses_bad_fields(entry: dict, tmp_path: Path) -> None:
    with pytest.raises(NotOurs):
        ko.undo(entry, print, configfs=tmp_path, sys_nvme=tmp_path)


def _ctrl(root: Path, name: str, nqn: str, addr: str) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "state").write_text("live\n")
    (d / "transport").write_text("rdma\n")
    (d / "subsysnqn").write_text(nqn + "\n")
    (d / "address").write_text(addr + "\n")


def test_nvme_ctrls_match_only_ours(tmp_path: Path) -> None:
    _ctrl(tmp_path, "nvme0", "nqn.foreign:disk", "traddr=198.18.0.2,trsvcid=4420,"
          "host_traddr=198.18.0.1")
    _ctrl(tmp_path, "nvme1", NQN, "traddr=198.18.0.2,trsvcid=4420,host_traddr=198.18.0.1")
    (tmp_path / "not-a-ctrl").mkdir()
    ctrls = ko.nvme_ctrls(tmp_path)
    assert [c.name for c in ctrls] == ["nvme0", "nvme1"]
    mine = [c.name for c in ctrls if c.matches(NQN, "198.18.0.2", "4420", "198.18.0.1")]
    assert mine == ["nvme1"]


def test_undo_removes_only_our_configfs_items(tmp_path: Path) -> None:
    nvmet = tmp_path / "nvmet"
    ours = nvmet / "subsystems" / NQN
    foreign = nvmet / "subsystems" / "nqn.foreign:disk"
    ours.mkdir(parents=True)
    foreign.mkdir(parents=True)
    (nvmet / "ports" / "1870").mkdir(parents=True)
    (nvmet / "ports" / "1").mkdir(parents=True)
    ko.undo({"kind": "nvmet_subsys", "nqn": NQN}, print, configfs=tmp_path)
    ko.undo({"kind": "nvmet_port", "port": 1870}, print, configfs=tmp_path)
    assert not ours.exists() and foreign.exists()
    assert not (nvmet / "ports" / "1870").exists() and (nvmet / "ports" / "1").exists()
    # already gone: nothing to do, no error
    ko.undo({"kind": "nvmet_subsys", "nqn": NQN}, print, configfs=tmp_path)


def test_namespace_block_plain_and_multipath(tmp_path: Path) -> None:
    (tmp_path / "a" / "nvme2n1").mkdir(parents=True)
    (tmp_path / "b" / "nvme0c3n1").mkdir(parents=True)
    (tmp_path / "c" / "power").mkdir(parents=True)
    assert namespace_block(tmp_path / "a") == "nvme2n1"
    assert namespace_block(tmp_path / "b") == "nvme0n1"
    assert namespace_block(tmp_path / "c") is None


def test_policy_presets_and_raw() -> None:
    assert parse_policy("nvme-rdma") == NvmeOptions(600, 10, -1)
    assert parse_policy("nvme-rdma:ctrl-loss-forever").ctrl_loss_tmo == -1
    assert set(PRESETS) == {"nvme-rdma", "nvme-rdma:ctrl-loss-forever", "nvme-rdma:fast-fail"}
    raw = parse_policy("nvme-rdma:ctrl_loss_tmo=5:reconnect_delay=1:fast_io_fail_tmo=0")
    assert raw == NvmeOptions(5, 1, 0)
    assert raw.fabrics_options() == "ctrl_loss_tmo=5,reconnect_delay=1,fast_io_fail_tmo=0"
    assert NvmeOptions(600, 10, -1).fabrics_options() == "ctrl_loss_tmo=600,reconnect_delay=10"


@pytest.mark.parametrize("raw", ["nfs-rdma", "nvme-rdma:bogus=1", "nvme-rdma:reconnect_delay=0",
                                 "nvme-rdma:ctrl_loss_tmo=x", "nvme-rdma:fast"])
def test_policy_refused(raw: str) -> None:
    with pytest.raises(SettingError):
        parse_policy(raw)


def _cm(dev: str, src: str, dst: str, dport: int, state: str = "CONNECT") -> dict:
    return {"ifname": dev, "state": state, "src-addr": f"{src}:40000",
            "dst-addr": f"{dst}:{dport}", "comm": "nvme_rdma"}


def test_parse_recorded_cm_ids(data_dir: Path) -> None:
    """`rdma -j res show cm_id` in the guest with one nvme-rdma controller connected."""
    import json

    ids = parse_cm_ids(json.loads((data_dir / "rdma_cm_id_nvme.json").read_text()))
    host = [c for c in ids if c.comm == "nvme_rdma"]
    assert len(host) == 3 and {c.dev for c in host} == {"rxe0"}
    assert {(c.src, c.dst, c.dst_port) for c in host} == {("198.18.0.1", "198.18.0.2", 4420)}
    listen = [c for c in ids if c.state == "LISTEN"]
    assert [(c.dev, c.src, c.src_port) for c in listen] == [("rxe1", "198.18.0.2", 4420)]
    samples = [CmSample(1, tuple(ids))]
    conns = connections(samples, 4420, 10, 20)
    assert [(c.phase, c.dev, c.src) for c in conns] == [("before", "rxe0", "198.18.0.1")]
    assert off_wire(conns, TopologyConfig()) == []


def test_connections_and_off_wire() -> None:
    cfg = TopologyConfig()
    ok = _cm("rxe0", "198.18.0.1", "198.18.0.2", 4420)
    loop = _cm("rxe1", "198.18.0.2", "198.18.0.2", 4420)
    listener = {**_cm("rxe1", "198.18.0.2", "0.0.0.0", 0, "LISTEN")}
    samples = [CmSample(10, tuple(parse_cm_ids([ok, listener]))),
               CmSample(20, tuple(parse_cm_ids([loop, listener]))),
               CmSample(40, tuple(parse_cm_ids([ok, listener])))]
    conns = connections(samples, 4420, 15, 30)
    assert [(c.phase, c.dev) for c in conns] == [("before", "rxe0"), ("during", "rxe1"),
                                                  ("after", "rxe0")]
    bad = off_wire(conns, cfg)
    assert [(c.phase, c.dev, c.src) for c in bad] == [("during", "rxe1", "198.18.0.2")]


def test_requirements_find_modules_and_tools(tmp_path: Path) -> None:
    from clients.kernel.requirements import MODULES, missing

    drivers = tmp_path / "kernel" / "drivers"
    drivers.mkdir(parents=True)
    for mod in MODULES[:-1]:
        (drivers / f"{mod.replace('-', '_')}.ko.xz").write_text("")
    gaps = missing(tmp_path, which=lambda t: None if t == "fio" else f"/usr/bin/{t}")
    assert [w for w, _ in gaps] == [f"kernel module nvme-fabrics not in {tmp_path}",
                                    "fio not on PATH"]


def test_admin_timeout_is_set_recorded_and_put_back(tmp_path: Path, monkeypatch) -> None:
    """`nvme-rdma:admin_timeout=N` sets nvme_core's admin_timeout for the scenario: the
    old value is in the state file before the write (cleanup after a kill puts it back)
    and the scenario's teardown restores it. Only that parameter may be written."""
    from harness.core import state as st

    monkeypatch.setattr(st, "STATE_PATH", tmp_path / "state.json")
    params = tmp_path / "nvme_core" / "parameters"
    params.mkdir(parents=True)
    (params / "admin_timeout").write_text("60\n")
    state = st.StateFile.load()
    assert parse_policy("nvme-rdma:admin_timeout=5").admin_timeout == 5
    assert ko.set_module_param(state, "nvme_core.admin_timeout", 5, tmp_path) == 60
    assert (params / "admin_timeout").read_text() == "5"
    (entry,) = st.StateFile.load().created
    assert (entry["kind"], entry["param"], entry["old"]) == ("module_param",
                                                             "nvme_core.admin_timeout", 60)
    ko.restore_module_param(st.StateFile.load(), "nvme_core.admin_timeout", print, tmp_path)
    assert (params / "admin_timeout").read_text() == "60"
    assert not st.StateFile.load().created
    with pytest.raises(NotOurs):
        ko.undo({"kind": "module_param", "param": "kernel.panic", "old": 1}, print,
                sys_module=tmp_path)
    with pytest.raises(NotOurs):
        ko.set_module_param(state, "../../etc.passwd", 1, tmp_path)
    with pytest.raises(SettingError):
        parse_policy("nvme-rdma:admin_timeout=0")


def test_every_kernel_client_kind_has_exactly_one_remover() -> None:
    from harness.core.state_entries import KERNEL_CLIENT_KINDS
    from harness.system import kernelobjs, nfsobjs, paging_objs
    owners = [set(kernelobjs.UNDO_BY_KIND), set(nfsobjs.NFS_KINDS), set(paging_objs.PAGING_KINDS)]
    for kind in KERNEL_CLIENT_KINDS:
        assert sum(kind in o for o in owners) == 1, kind
    assert set().union(*owners) == set(KERNEL_CLIENT_KINDS)


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    from harness.core.errors import TopologyError
    from harness.system import kernelobjs
    with pytest.raises(TopologyError, match="unknown kernel-object kind"):
        kernelobjs.undo({"kind": "rxpw_bogus"}, configfs=tmp_path)
