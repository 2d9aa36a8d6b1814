"""`--peer same-kernel|guest` (harness.cli.peer_option): parsed once at the edge into a
PeerPlacement, said and recorded with its reason; `guest` refused before any VM boots
where the run's scenarios cannot have it (anything but the kernel clients in `matrix`,
a transition that re-makes the netdev, a native run), and handed to the guest where they
can. Pure logic: the VM runner is a recorder (no guest boots)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.cli.peer_option import choose_peer
from harness.core import settings
from harness.core.errors import SettingError
from harness.core.settings import Mode, PeerPlacement
from harness.system.provenance import LaunchFacts, Provenance
from harness.system.provenance_collect import Sources, collect
from tests.helpers.guest_recorder import GuestRecorder


@pytest.fixture(autouse=True)
def _no_peer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RXE_POWER_PEER", raising=False)
    monkeypatch.delenv(settings.LAUNCH_ENV, raising=False)


def test_default_is_same_kernel_and_says_why() -> None:
    peer, why = choose_peer(None, Mode.VM, "matrix", None)
    assert peer is PeerPlacement.SAME_KERNEL and "default" in why and "kernel clients" in why
    peer, why = choose_peer("same-kernel", Mode.NATIVE, "run", None)
    assert peer is PeerPlacement.SAME_KERNEL and why == "from command-line option --peer"


def test_the_environment_counts_and_a_bad_value_names_its_source(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RXE_POWER_PEER", "same-kernel")
    assert choose_peer(None, Mode.VM, "run", None)[1] == \
        "from environment variable RXE_POWER_PEER"
    with pytest.raises(SettingError, match=r"--peer.*'elsewhere' is not one of"):
        choose_peer("elsewhere", Mode.VM, "run", None)


@pytest.mark.parametrize("mode,problem,why", [
    (Mode.VM, "graceful runs only here", "graceful runs only here"),
    (Mode.NATIVE, None, "needs two guest kernels")])
def test_guest_is_refused_with_its_reason_and_fix(mode: Mode, problem: str | None,
                                                  why: str) -> None:
    with pytest.raises(SettingError, match=why) as exc:
        choose_peer("guest", mode, "matrix", problem)
    assert exc.value.fix
    # negative control: a run that can have it, in the VM, gets it
    assert choose_peer("guest", Mode.VM, "matrix", None)[0] is PeerPlacement.GUEST


GUEST = ["--mode", "vm", "--peer", "guest"]


@pytest.mark.parametrize("argv", [["matrix", *GUEST, "--transition", "link-flap"],
                                  ["run", *GUEST, "--policy", "graceful"], ["bench", *GUEST],
                                  ["stress", *GUEST, "--transition", "link-flap"],
                                  ["test", *GUEST, "--", "-k", "x"]],
                         ids=["matrix", "run-userspace-only", "bench", "stress", "test"])
def test_guest_is_refused_before_any_boot(guest: GuestRecorder, argv: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main.main(argv)
    assert code == main.HARNESS_ERROR_EXIT
    assert guest.requests == []  # no boot
    assert "--peer guest" in capsys.readouterr().err


def test_same_kernel_boots_and_the_choice_reaches_the_guest(guest: GuestRecorder,
                                                            tmp_path: Path) -> None:
    """Negative control of the refusal: the same command with same-kernel boots, and the
    guest's launch record carries the reason into the provenance."""
    main.main(["matrix", "--mode", "vm", "--peer", "same-kernel", "--transition",
               "link-flap", "--out", str(tmp_path / "out")])
    (inv,) = guest.invocations()  # the guest's invocation carries it to the provenance
    assert inv.launch_facts().peer_reason == "same-kernel: from command-line option --peer"


def test_provenance_records_the_placement_and_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = LaunchFacts(Mode.NATIVE, "test", collect(Sources()).tree, "rxe-power run",
                        "", peer_reason="same-kernel: from --peer")
    monkeypatch.setenv(settings.LAUNCH_ENV, json.dumps(facts.to_json()))
    prov = collect(Sources())
    assert prov.peer is PeerPlacement.SAME_KERNEL
    assert prov.peer_reason == "same-kernel: from --peer"
    back = Provenance.from_json(prov.to_json())
    assert (back.peer, back.peer_reason) == (prov.peer, prov.peer_reason)
    old = prov.to_json()
    del old["peer_reason"]
    old["schema"] = 2  # a file written before the field: still read
    old["faults"] = "userspace-removal"  # (and before schema 4's list of fault models)

    assert Provenance.from_json(old).peer_reason == ""
    monkeypatch.delenv(settings.LAUNCH_ENV)  # not launched by the CLI: no reason to give
    assert collect(Sources()).peer_reason == "not said"


@pytest.mark.parametrize("argv,refusal", [
    (["--policy", "graceful", "--transition", "standby"], "graceful run only with the peer"),
    (["--policy", "fail-fast", "--transition", "standby"], "fail-fast run only with the peer"),
    (["--policy", "nfs-rdma:hard,nfs-rdma:soft", "--transition", "standby"], None),
    (["--policy", "nvme-rdma", "--transition", "hibernate"],
     "hibernate clients-first: steps create-netdev, destroy-netdev"),
    (["--policy", "nvme-rdma", "--transition", "standby"], None),
    (["--policy", "nvme-rdma:fast-fail", "--transition", "link-flap,standby,surprise-removal"],
     None)])
def test_matrix_with_the_peer_in_a_guest_boots_two_kernels_for_nvme_only(
        guest: GuestRecorder, argv: list[str], refusal: str | None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What the peer guest can serve (nvme-rdma, nfs-rdma; transitions that keep the NIC) boots
    the pair and the guest's invocation says `guest`; anything else is refused before any
    boot, naming what runs only in one kernel."""
    code = main.main(["matrix", *GUEST, *argv, "--out", str(tmp_path / "out")])
    if refusal is not None:
        assert code == main.HARNESS_ERROR_EXIT and guest.requests == []
        assert refusal in capsys.readouterr().err
        return
    (inv,) = guest.invocations()
    (peer,) = guest.peers  # the peer guest beside it, running the peer's side
    assert "harness.run.pair_peer" in peer.command and peer.cpus == 1
    assert inv.peer is PeerPlacement.GUEST
    assert inv.launch_facts().peer is PeerPlacement.GUEST
    assert inv.launch_facts().peer_reason.startswith("guest: from command-line option")


@pytest.mark.parametrize("command", [["run"], ["matrix", "--policy", "graceful,nvme-rdma",
                                               "--transition", "standby"]])
def test_a_mixed_run_with_the_peer_in_a_guest_is_split_by_placement(
        guest: GuestRecorder, command: list[str], tmp_path: Path) -> None:
    """`--peer guest` on a run of userspace and kernel rows: the kernel clients' rows boot
    the pair, the rest one guest of one kernel, each part's invocation saying its own
    placement and why; both in folders of the one results folder. Negative control: the
    same command without --peer boots one guest with every row, in one kernel."""
    out = tmp_path / "out"
    main.main([*command, *GUEST, "--out", str(out)])
    one, two = guest.invocations()
    assert len(guest.peers) == 1  # the pair: once, for the kernel rows
    assert (one.peer, two.peer) == (PeerPlacement.SAME_KERNEL, PeerPlacement.GUEST)
    assert one.results == out / "one-kernel" and two.results == out / "two-kernels"
    assert "cannot have yet" in one.peer_reason and two.peer_reason.startswith("guest: from")
    lanes = [{p.lane.value for p in inv.job.spec.policies} for inv in (one, two)]  # type: ignore[attr-defined]
    assert "kernel" not in lanes[0] and lanes[1] == {"kernel"}
    guest.requests.clear()
    main.main([*command, "--mode", "vm", "--out", str(tmp_path / "plain")])
    (plain,) = guest.invocations()
    assert plain.peer is PeerPlacement.SAME_KERNEL and guest.peers == [guest.peers[0]]
