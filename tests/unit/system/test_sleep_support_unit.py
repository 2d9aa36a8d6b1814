"""Which devices a guest's sleep must keep awake, and arming our rdma_rxe's sleep
callbacks (harness.system.sleep_support), on recorded sysfs trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import RxePowerError
from harness.system import sleep_support as ss


def fake_virtio(root: Path, devices: dict[str, tuple[str, str, str]]) -> Path:
    """/sys/bus/virtio/devices: name -> (driver, parent folder, parent's subsystem)."""
    bus = root / "bus" / "virtio" / "devices"
    bus.mkdir(parents=True)
    for name, (driver, parent, subsystem) in devices.items():
        par = root / "devices" / parent
        (par / name).mkdir(parents=True)
        (root / "subsys" / subsystem).mkdir(parents=True, exist_ok=True)
        if not (par / "subsystem").exists():
            (par / "subsystem").symlink_to(root / "subsys" / subsystem)
        (root / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        (par / name / "driver").symlink_to(root / "drivers" / driver)
        (bus / name).symlink_to(par / name)
    return bus


def test_the_shared_file_systems_and_their_pci_transports(tmp_path: Path) -> None:
    bus = fake_virtio(tmp_path, {
        "virtio0": ("virtiofs", "pci0000:00/0000:00:02.0", "pci"),
        "virtio1": ("9pnet_virtio", "pci0000:00/0000:00:03.0", "pci"),
        "virtio2": ("virtio_console", "pci0000:00/0000:00:04.0", "pci"),
        "virtio3": ("virtio_net", "pci0000:00/0000:00:05.0", "pci")})
    assert ss.fs_transports(bus) == (
        ss.FsTransport("virtio0", "virtiofs", "0000:00:02.0"),
        ss.FsTransport("virtio1", "9pnet_virtio", "0000:00:03.0"))
    assert ss.fs_transports(tmp_path / "absent") == ()


def test_a_transport_off_pci_is_refused_with_the_fix(tmp_path: Path) -> None:
    bus = fake_virtio(tmp_path, {"virtio0": ("virtiofs", "virtio-mmio.0", "platform")})
    with pytest.raises(RxePowerError, match="does not sit on a PCI device") as err:
        ss.fs_transports(bus)
    assert "microvm" in err.value.fix


def test_armed_names_the_devices_and_empties_the_parameter(tmp_path: Path) -> None:
    param = tmp_path / "pm_unregister"
    with pytest.raises(RxePowerError, match="not our `pm` build"), ss.armed(["rxe0"], param):
        pass
    param.write_text("")
    assert ss.can_arm(param)
    with pytest.raises(RuntimeError), ss.armed(["rxe0"], param):
        assert param.read_text() == "rxe0"
        raise RuntimeError("the sleep failed")
    assert param.read_text() == "\n"  # not "": an empty write does not reach sysfs
    with pytest.raises(ValueError, match="not an ib_device name"), \
            ss.armed(["rxe0,rxe1"], param):
        pass
