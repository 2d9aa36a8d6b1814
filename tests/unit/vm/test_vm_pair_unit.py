"""Unit tests of the two-kernel pair's plan (harness.vm.pair, harness.topology.wire):
the links' QEMU arguments, the one address plan, the netdev found by its MAC. No boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import SettingError
from harness.topology import wire
from harness.topology.wire import Link, PairSide, link_end
from harness.vm import pair
from harness.vm.kernel import GuestKernel
from harness.vm.runner import VmRequest, build_vng_argv


def _opts(sock_dir: Path, side: PairSide) -> dict[str, list[str]]:
    """{"-netdev": [...], "-device": [...]} of one side's QEMU arguments."""
    opts = pair.link_qemu_opts(sock_dir, side)
    out: dict[str, list[str]] = {"-netdev": [], "-device": []}
    for flag, value in zip(opts[::2], opts[1::2], strict=True):
        out[flag].append(value)
    return out


def test_each_side_sends_to_the_socket_the_other_binds(tmp_path: Path) -> None:
    local, peer = _opts(tmp_path, PairSide.LOCAL), _opts(tmp_path, PairSide.PEER)

    def fields(netdev: str) -> dict[str, str]:
        return dict(f.split("=", 1) for f in netdev.split(",")[1:])

    for lo, pe in zip(local["-netdev"], peer["-netdev"], strict=True):
        a, b = fields(lo), fields(pe)
        assert lo.startswith("dgram,") and a["id"] == b["id"]
        assert a["local.path"] == b["remote.path"] and a["remote.path"] == b["local.path"]
        assert a["local.path"] != b["local.path"]
        assert Path(a["local.path"]).parent == tmp_path
    assert sorted(fields(n)["id"] for n in local["-netdev"]) == ["mgmt", "wire"]


def test_macs_and_addresses_differ_per_side_and_link() -> None:
    ends = [link_end(link, side) for link in Link for side in PairSide]
    assert len({e.mac for e in ends}) == len({e.addr for e in ends}) == 4
    assert link_end(Link.WIRE, PairSide.LOCAL).addr == "198.18.0.1"
    assert link_end(Link.WIRE, PairSide.PEER).addr == "198.18.0.2"
    assert link_end(Link.MGMT, PairSide.PEER).cidr == "198.18.1.2/24"


def test_device_carries_the_ends_mac(tmp_path: Path) -> None:
    devices = _opts(tmp_path, PairSide.PEER)["-device"]
    assert f"mac={link_end(Link.WIRE, PairSide.PEER).mac}" in devices[0]
    assert f"mac={link_end(Link.MGMT, PairSide.PEER).mac}" in devices[1]


def test_qemu_opts_go_last_as_one_word_and_unsafe_ones_are_refused(tmp_path: Path) -> None:
    k = GuestKernel("6.1.0-x", tmp_path / "vmlinuz", tmp_path / "rdma_rxe.ko")
    req = VmRequest(command=["true"], rw_dirs=[], log_path=tmp_path / "l",
                    qemu_opts=pair.link_qemu_opts(tmp_path, PairSide.LOCAL))
    argv = build_vng_argv(req, k, "tcg", "/v/vng")
    assert argv[-1] == "--qemu-opts=" + " ".join(req.qemu_opts)
    assert argv[-3] == "--exec"
    req.qemu_opts = ["-netdev", "dgram,id=x,local.path=/tmp/a b;reboot"]
    with pytest.raises(SettingError, match="shell"):
        build_vng_argv(req, k, "tcg", "/v/vng")


def test_no_qemu_opts_leaves_the_argv_as_before(tmp_path: Path) -> None:
    k = GuestKernel("6.1.0-x", tmp_path / "vmlinuz", tmp_path / "rdma_rxe.ko")
    argv = build_vng_argv(VmRequest(["true"], [], tmp_path / "l"), k, "tcg", "/v/vng")
    assert argv[-2] == "--exec" and not any(a.startswith("--qemu-opts") for a in argv)


def test_netdev_found_by_its_mac_only(tmp_path: Path) -> None:
    for name, mac in (("eth0", "52:54:00:18:00:01"), ("eth1", "52:54:00:18:01:01"),
                      ("lo", "00:00:00:00:00:00")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(mac + "\n")
    (tmp_path / "odd").mkdir()  # no address file: skipped
    assert wire.netdev_by_mac("52:54:00:18:01:01", tmp_path) == "eth1"
    assert wire.netdev_by_mac("52:54:00:18:00:01".upper(), tmp_path) == "eth0"
    assert wire.netdev_by_mac("52:54:00:18:00:02", tmp_path) is None
    assert wire.netdev_by_mac("52:54:00:18:00:02", tmp_path / "absent") is None


def test_probe_line_is_read_back_from_a_console_log(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text('# header\nnoise PAIR-PROBE {"side":"x"}\n'
                   'peer| PAIR-PROBE {"side":"peer","ok":true}\n')
    assert pair.probe_line(log) == {"side": "peer", "ok": True}  # the noisy line is skipped
    log.write_text('PAIR-PROBE {"side":"local"}\n')
    assert pair.probe_line(log) == {"side": "local"}
    log.write_text("no probe line\n")
    assert pair.probe_line(log) is None
