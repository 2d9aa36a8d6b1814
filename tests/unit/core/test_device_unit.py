"""The one device description (harness.core.device.DeviceInfo), as topology extends it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest

from harness.core.device import DeviceInfo
from harness.core.errors import ProtocolError

FIELDS = {"dev": "rxe0", "port": 1, "netdev": "rxpw0", "ifindex": 12, "addr": "198.18.0.1",
          "gid": "::ffff:198.18.0.1", "gid_index": 1}


@dataclass(frozen=True)
class PortedDevice(DeviceInfo):
    """What harness.topology's Endpoint is meant to become: a DeviceInfo plus its state."""

    state: str


def test_a_subclass_is_a_device_and_its_wire_form_is_the_device_only() -> None:
    ep = PortedDevice(*FIELDS.values(), "ACTIVE")  # positional, as topology builds it
    assert ep.dev == "rxe0" and ep.state == "ACTIVE"
    assert ep.to_json() == FIELDS  # the notice's "device": no state
    assert asdict(ep) == {**FIELDS, "state": "ACTIVE"}
    assert DeviceInfo.from_endpoint(ep) == DeviceInfo(**FIELDS)
    assert type(DeviceInfo.from_endpoint(ep)) is DeviceInfo
    assert DeviceInfo.from_json({**FIELDS, "state": "DOWN"}) == DeviceInfo(**FIELDS)


@pytest.mark.parametrize(("bad", "needle"), [
    ({**FIELDS, "port": True}, "'port'"),
    ({**FIELDS, "ifindex": -1}, "'ifindex' is -1"),
    ({k: v for k, v in FIELDS.items() if k != "gid"}, "'gid' is missing"),
    (["rxe0"], "not an object"),
])
def test_from_json_names_the_bad_field(bad: object, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        DeviceInfo.from_json(bad)
