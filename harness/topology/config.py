"""What the topology is: its names and addresses (TopologyConfig, one host's Side), the
policy rules and tables that force traffic onto the wire, and the HCAs as discovered
(Endpoint, Topology).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.core.errors import TopologyError
from harness.core.settings import resolve
from harness.system import network

TABLE_LOCAL_SIDE = "18770"  # routes the peer's address out of the local veth
TABLE_PEER_SIDE = "18771"  # routes the local address out of the peer veth
RULE_PREFS = (1, 2, 3, 4, 5, 6)
LOCAL_RULE_NEW_PREF = 10

@dataclass(frozen=True)
class TopologyConfig:
    local_dev: str = "rxe0"
    peer_dev: str = "rxe1"
    local_netdev: str = "rxpw0"
    peer_netdev: str = "rxpw1"
    local_addr: str = "198.18.0.1"
    peer_addr: str = "198.18.0.2"
    switch: str = "rxpwsw"

    @staticmethod
    def switch_port(netdev: str) -> str:
        """The switch-side end of a host's veth pair."""
        return netdev[:14] + "s"

    def side(self, which: str) -> Side:
        """The netdev-level description of one host ("local" or "peer")."""
        if which == "local":
            return Side(self.local_netdev, self.switch_port(self.local_netdev), self.local_addr,
                        self.peer_addr, TABLE_LOCAL_SIDE, self.local_dev)
        return Side(self.peer_netdev, self.switch_port(self.peer_netdev), self.peer_addr,
                    self.local_addr, TABLE_PEER_SIDE, self.peer_dev)

    @classmethod
    def from_settings(cls, cli: dict[str, str | None] | None = None) -> TopologyConfig:
        """Build from the settings table (CLI > environment > default)."""

        cli = cli or {}
        val = {k: resolve(k, cli.get(k)).value for k in (
            "rxe-local-dev", "rxe-peer-dev", "rxe-local-netdev", "rxe-peer-netdev",
            "rxe-local-addr", "rxe-peer-addr")}
        cfg = cls(val["rxe-local-dev"], val["rxe-peer-dev"], val["rxe-local-netdev"],
                  val["rxe-peer-netdev"], val["rxe-local-addr"], val["rxe-peer-addr"])
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.local_dev == self.peer_dev:
            raise TopologyError(f"local and peer device are both {self.local_dev!r}",
                                "give the peer HCA its own name (RXE_POWER_PEER_DEV)")
        if self.local_netdev == self.peer_netdev:
            raise TopologyError(f"local and peer netdev are both {self.local_netdev!r}",
                                "give each veth end its own name")
        names = [self.local_netdev, self.peer_netdev, self.switch,
                 self.switch_port(self.local_netdev), self.switch_port(self.peer_netdev)]
        if len(set(names)) != len(names):
            raise TopologyError(f"netdev names collide: {names}",
                                "choose netdev names that differ in their first 14 characters "
                                "and from the switch name")
        if self.local_addr == self.peer_addr:
            raise TopologyError(f"local and peer address are both {self.local_addr}",
                                "give each end its own IPv4 address")

    def rules(self) -> list[network.IpRule]:
        a, b = self.local_addr, self.peer_addr
        p = RULE_PREFS
        return [
            network.IpRule(p[0], "local", iif=self.local_netdev),
            network.IpRule(p[1], "local", iif=self.peer_netdev),
            network.IpRule(p[2], TABLE_LOCAL_SIDE, src=a),
            network.IpRule(p[3], TABLE_LOCAL_SIDE, dst=b),
            network.IpRule(p[4], TABLE_PEER_SIDE, src=b),
            network.IpRule(p[5], TABLE_PEER_SIDE, dst=a),
        ]


@dataclass(frozen=True)
class Side:
    """One host's netdev, its switch port, its address and its routing table."""

    netdev: str
    switch_port: str
    addr: str
    remote_addr: str
    table: str
    rdma_dev: str


@dataclass(frozen=True)
class Endpoint:
    """One HCA of the topology as discovered."""

    dev: str
    port: int
    netdev: str
    ifindex: int
    addr: str
    gid: str
    gid_index: int
    state: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Topology:
    local: Endpoint
    peer: Endpoint

    def to_json(self) -> dict[str, Any]:
        return {"local": self.local.to_json(), "peer": self.peer.to_json()}
