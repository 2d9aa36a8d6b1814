"""Receive packet steering on the topology's veths (harness.system.network.steer_flows):
the CPU mask sysfs takes, and what is written where, on a sysfs tree made here."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.system.network import cpu_mask, steer_flows


@pytest.mark.parametrize("online,mask", [
    ("0-1\n", "3"), ("0", "1"), ("0,2-3", "d"), ("5", "20"), ("0-31", "ffffffff"),
    ("0-32", "1,ffffffff"), ("0-63", "ffffffff,ffffffff"), ("32", "1,00000000"),
])
def test_cpu_mask(online: str, mask: str) -> None:
    assert cpu_mask(online) == mask


def test_cpu_mask_refuses_no_cpu() -> None:
    with pytest.raises(ValueError):
        cpu_mask("")


def _tree(tmp_path: Path, queues: int) -> tuple[Path, Path]:
    net = tmp_path / "net"
    for q in range(queues):
        d = net / "rxpw0s" / "queues" / f"rx-{q}"
        d.mkdir(parents=True)
        (d / "rps_cpus").write_text("0\n")
    (net / "rxpw0s" / "queues" / "tx-0").mkdir(parents=True)
    online = tmp_path / "online"
    online.write_text("0-1\n")
    return net, online


def test_steering_on_and_off_writes_every_receive_queue(tmp_path: Path) -> None:
    net, online = _tree(tmp_path, 2)
    assert steer_flows("rxpw0s", True, net, online)
    files = sorted(net.glob("rxpw0s/queues/*/rps_cpus"))
    assert [f.parent.name for f in files] == ["rx-0", "rx-1"]
    assert [f.read_text() for f in files] == ["3", "3"]
    assert steer_flows("rxpw0s", False, net, online)
    assert [f.read_text() for f in files] == ["0", "0"]


def test_a_kernel_without_rps_is_said_so(tmp_path: Path) -> None:
    net, online = _tree(tmp_path, 0)
    assert steer_flows("rxpw0s", True, net, online) is False
    assert steer_flows("nosuchdev", True, net, online) is False
