"""What the running system has now, as typed records: RDMA links (netlink, `rdma -j` as
the fallback), network interfaces, IPv4 addresses, policy rules and routes (`ip -j`).
"""

from __future__ import annotations

from harness.core.errors import RxePowerError
from harness.system import command, network, rdma_netlink


def rdma_links() -> list[rdma_netlink.RdmaLink]:
    try:  # no program run: the shim polls this
        return rdma_netlink.nldev_links()
    except (OSError, RxePowerError):
        return rdma_netlink.parse_rdma_links(command.run_json(["rdma", "-j", "link", "show"]))


def ip_links() -> list[network.NetLink]:
    return network.parse_ip_links(command.run_json(["ip", "-j", "-d", "link", "show"]))


def ip_addrs() -> list[network.IpAddr]:
    return network.parse_ip_addrs(command.run_json(["ip", "-j", "-4", "addr", "show"]))


def ip_rules() -> list[network.IpRule]:
    return network.parse_ip_rules(command.run_json(["ip", "-j", "-4", "rule", "show"]))


def ip_routes(table: str) -> list[network.IpRoute]:
    res = command.run(["ip", "-j", "-4", "route", "show", "table", table], check=False)
    if res.returncode != 0:  # an empty/nonexistent table
        return []
    return network.parse_ip_routes(command.parse_json_list(res.stdout, "ip route"), table)
