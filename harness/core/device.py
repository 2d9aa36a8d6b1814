"""The one description of an RDMA device as a client reaches it.

DeviceInfo names the HCA (dev, port), the netdev under it (name, ifindex), the address
and GID the test traffic uses and the GID's index. The power shim sends it to every
client in `resume_complete` (power.notify), a client worker gets it in `start`
(clients.userspace.worker), and the topology's Endpoint is a DeviceInfo with the port state
added (harness.topology), so the fields are defined here once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol

from harness.core.errors import ProtocolError
from harness.core.strict_json import MAX_INT

_INT_FIELDS = ("port", "ifindex", "gid_index")


class HasDeviceFields(Protocol):
    """Anything that carries DeviceInfo's fields by name (a topology Endpoint)."""

    @property
    def dev(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def netdev(self) -> str: ...
    @property
    def ifindex(self) -> int: ...
    @property
    def addr(self) -> str: ...
    @property
    def gid(self) -> str: ...
    @property
    def gid_index(self) -> int: ...


@dataclass(frozen=True)
class DeviceInfo:
    """One HCA: what a client needs to (re)open it and reach the peer's address."""

    dev: str
    port: int
    netdev: str
    ifindex: int
    addr: str
    gid: str
    gid_index: int

    def to_json(self) -> dict[str, Any]:
        """The DeviceInfo fields only (a subclass's extra fields stay out of the wire form)."""
        return {f.name: getattr(self, f.name) for f in fields(DeviceInfo)}

    @classmethod
    def from_json(cls, d: object) -> DeviceInfo:
        """Build from a dict, checking every field's type; extra keys are ignored."""
        if not isinstance(d, dict):
            raise ProtocolError(f"device info is a {type(d).__name__}, not an object",
                                "send the device as a JSON object")
        values: dict[str, Any] = {}
        for f in fields(DeviceInfo):
            typ = int if f.name in _INT_FIELDS else str
            val = d.get(f.name)
            if val is None or isinstance(val, bool) or not isinstance(val, typ):
                raise ProtocolError(f"device info field {f.name!r} is missing or not "
                                    f"{typ.__name__} ({str(val)[:60]!r})",
                                    f"send {f.name!r} as a JSON {typ.__name__}")
            if isinstance(val, int) and not 0 <= val <= MAX_INT:
                raise ProtocolError(f"device info field {f.name!r} is {val}, outside 0..2**64-1",
                                    f"send {f.name!r} as a non-negative integer")
            values[f.name] = val
        return DeviceInfo(**values)

    @classmethod
    def from_endpoint(cls, ep: HasDeviceFields) -> DeviceInfo:
        """The DeviceInfo part of `ep` (a topology Endpoint, which adds the port state)."""
        return DeviceInfo(**{f.name: getattr(ep, f.name) for f in fields(DeviceInfo)})
