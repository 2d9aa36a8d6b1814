"""The kernel interfaces read as JSON (rdma -j, ip -j), on recorded data. Pure logic: any host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.system import command, gid_table, network, rdma_netlink
from harness.topology import pingpong
from harness.topology.config import TopologyConfig


def test_parse_rdma_links(data_dir: Path) -> None:
    links = rdma_netlink.parse_rdma_links(json.loads((data_dir / "rdma_link.json").read_text()))
    assert [(lk.ifname, lk.state, lk.netdev) for lk in links] == [
        ("rxe0", "ACTIVE", "rxpw0"), ("rxe1", "DOWN", "rxpw1")]


def test_parse_ip_rules(data_dir: Path) -> None:
    rules = network.parse_ip_rules(json.loads((data_dir / "ip_rule.json").read_text()))
    by_pref = {r.priority: r for r in rules}
    assert by_pref[1].iif == "rxpw0" and by_pref[1].table == "local"
    assert by_pref[10].src is None
    assert by_pref[100].src == "10.0.0.0/8"
    ours = {tuple(r.selector_args()) for r in TopologyConfig().rules()}
    assert tuple(by_pref[3].selector_args()) in ours
    assert tuple(by_pref[4].selector_args()) in ours


def test_parse_json_list_errors() -> None:
    with pytest.raises(Exception, match="invalid JSON"):
        command.parse_json_list("{oops", "ip -j link")
    assert command.parse_json_list("", "x") == []


def test_gid_lookup_by_type_and_address() -> None:
    gids = [
        gid_table.Gid(0, "fe80:0000:0000:0000:0000:0000:0000:0001", "RoCE v2", "rxpw0"),
        gid_table.Gid(1, gid_table.ipv4_mapped_gid("198.18.0.1"), "IB/RoCE v1", "rxpw0"),
        gid_table.Gid(2, gid_table.ipv4_mapped_gid("198.18.0.1"), "RoCE v2", "rxpw0"),
    ]
    assert gid_table.ipv4_mapped_gid("198.18.0.1").endswith("ffff:c612:0001")
    found = gid_table.find_rocev2_gid(gids, "198.18.0.1")
    assert found is not None and found.index == 2
    assert gid_table.find_rocev2_gid(gids, "198.18.0.9") is None


def test_read_gids_from_fake_sysfs(tmp_path: Path) -> None:
    port = tmp_path / "rxe9" / "ports" / "1"
    for idx, gid, gtype in ((0, "fe80::", "IB/RoCE v1"),
                            (1, gid_table.ipv4_mapped_gid("10.1.2.3"), "RoCE v2"),
                            (2, gid_table.ZERO_GID, "IB/RoCE v1")):  # an unused entry
        (port / "gids").mkdir(parents=True, exist_ok=True)
        (port / "gid_attrs" / "types").mkdir(parents=True, exist_ok=True)
        (port / "gids" / str(idx)).write_text(gid + "\n")
        (port / "gid_attrs" / "types" / str(idx)).write_text(gtype + "\n")
    gids = gid_table.read_gids("rxe9", sysfs=tmp_path)
    assert [g.index for g in gids] == [0, 1]
    assert gid_table.find_rocev2_gid(gids, "10.1.2.3").index == 1


def test_parse_pingpong() -> None:
    out = ("8192000 bytes in 0.35 seconds = 187.21 Mbit/sec\n"
           "1000 iters in 0.35 seconds = 350.00 usec/iter\n")
    assert pingpong.parse_pingpong(out) == (1000, 350.0)
    assert pingpong.parse_pingpong("garbage") is None
