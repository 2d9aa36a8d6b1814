"""Issue 17 #8: a netdev name with a dot (legal in Linux: eth0.100) keeps its dot in the
sysctl path, which is built from parts; names the kernel refuses are refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.settings import parse_ifname
from harness.topology.netdevs import netdev_sysctl_path, sysctl_path


def test_a_dotted_netdev_keeps_its_dot_in_the_sysctl_path() -> None:
    assert netdev_sysctl_path("rx.pw0", "rp_filter") == \
        Path("/proc/sys/net/ipv4/conf/rx.pw0/rp_filter")


def test_sysctl_path_from_parts_refuses_separators_and_dot_dirs() -> None:
    assert sysctl_path("net", "ipv4", "conf", "all", "rp_filter") == \
        Path("/proc/sys/net/ipv4/conf/all/rp_filter")
    for bad in ("..", ".", "a/b", "", "x\0"):
        with pytest.raises(ValueError):
            sysctl_path("net", "ipv4", "conf", bad, "rp_filter")


@pytest.mark.parametrize("name", [".", "..", "a/b", "a:b", "a b", "rxpw0\n"])
def test_parse_ifname_refuses_what_the_kernel_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        parse_ifname(name)


def test_parse_ifname_keeps_a_vlan_style_name() -> None:
    assert parse_ifname("eth0.100") == "eth0.100"
