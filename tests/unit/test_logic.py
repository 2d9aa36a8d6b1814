"""Pure logic: runs on any host, no rxe needed."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core import protocol
from harness.core.errors import OsCallError, ProtocolError, SettingError, TopologyError, oserror_to
from harness.core.schemas import PEER_REQUESTS, ChannelKind
from harness.core.settings import Mode, resolve
from harness.core.state import StateFile
from harness.rdma import payload
from harness.rdma.names import async_event_name, wc_opcode_name, wc_status_name
from harness.system import command, gid_table, network, rdma_netlink
from harness.topology import pingpong
from harness.topology.config import RULE_PREFS, TopologyConfig


# --- payload ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 23, 24, 25, 255, 256, 257, 4096, 65536])
def test_payload_roundtrip(size: int) -> None:
    data = payload.encode(77, size, generation=3)
    assert len(data) == size
    chk = payload.verify(data, expect_seq=77, expect_len=size)
    assert chk.ok, chk.reason
    if size >= payload.HEADER_LEN:
        assert chk.generation == 3


def test_payload_detects_corruption_everywhere() -> None:
    data = bytearray(payload.encode(5, 300))
    for pos in (0, 8, 20, 24, 150, 299):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        assert not payload.verify(bytes(bad), expect_seq=5).ok, pos


def test_payload_short_needs_seq_and_checks_pattern() -> None:
    data = payload.encode(9, 10)
    assert not payload.verify(data).ok
    assert payload.verify(data, expect_seq=9).ok
    assert not payload.verify(data, expect_seq=10).ok


def test_payload_patterns_differ_by_seq() -> None:
    assert payload.pattern(1, 512) != payload.pattern(257, 512)


# --- protocol -----------------------------------------------------------------------------
def test_protocol_roundtrip() -> None:
    msg = protocol.Message("fill", {"qp_id": 1, "offset": 0, "length": 8, "seq": 3}, 7)
    back = protocol.decode(msg.encode().rstrip(b"\n"), ChannelKind.PEER)
    assert (back.event, back.payload, back.id) == ("fill", msg.payload, 7)


@pytest.mark.parametrize("line,needle", [
    (b"not json", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"v":2,"id":1,"event":"hello","payload":{}}', "version"),
    (b'{"v":1,"id":1,"event":"nope","payload":{}}', "unknown event"),
    (b'{"v":1,"id":1,"event":"fill","payload":{"qp_id":1}}', "lacks field"),
    (b'{"v":1,"id":1,"event":"read_u64","payload":{"qp_id":"1","offset":0}}', "type"),
    (b'{"v":1,"id":1,"event":"read_u64","payload":{"qp_id":true,"offset":0}}', "type"),
])
def test_protocol_rejects(line: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        protocol.decode(line, ChannelKind.PEER)


def test_protocol_size_limit() -> None:
    reader = protocol.LineReader()
    with pytest.raises(ProtocolError, match="without a newline"):
        reader.feed(b"x" * (protocol.MAX_MESSAGE_BYTES + 1))
    assert reader.buf == b""
    assert reader.feed(b"xxx") == []  # still the oversized line: discarded
    assert reader.feed(b'x\n{"a":1}\n{"b"') == [b'{"a":1}']
    assert reader.feed(b":2}\n") == [b'{"b":2}']


@given(st.binary(max_size=512))
def test_protocol_decode_never_crashes(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.decode(raw, ChannelKind.PEER)


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
       st.sampled_from(sorted(PEER_REQUESTS)))
def test_protocol_decode_fuzz_payloads(payload_obj: dict, event: str) -> None:
    line = json.dumps({"v": 1, "id": 1, "event": event, "payload": payload_obj}).encode()
    try:
        msg = protocol.decode(line, ChannelKind.PEER)
    except ProtocolError:
        return
    for name in PEER_REQUESTS[event]:
        assert name in msg.payload


# --- settings -----------------------------------------------------------------------------
def test_settings_precedence() -> None:
    env = {"RXE_POWER_MODE": "vm"}
    assert resolve("rxe-mode", "native", "auto", env).value is Mode.NATIVE
    assert resolve("rxe-mode", None, "auto", env).value is Mode.VM
    assert resolve("rxe-mode", None, "native", {}).value is Mode.NATIVE
    got = resolve("rxe-mode", None, None, {})
    assert (got.value, got.source) == (Mode.AUTO, "built-in default")


def test_settings_error_names_source() -> None:
    with pytest.raises(SettingError, match="environment variable RXE_POWER_MODE"):
        resolve("rxe-mode", None, None, {"RXE_POWER_MODE": "sideways"})
    with pytest.raises(SettingError, match="command-line option --rxe-local-addr"):
        resolve("rxe-local-addr", "127.0.0.1", None, {})
    with pytest.raises(SettingError, match="ini option rxe_local_netdev"):
        resolve("rxe-local-netdev", None, "name-that-is-far-too-long", {})


def test_topology_config_validation() -> None:
    with pytest.raises(TopologyError, match="both"):
        TopologyConfig(local_dev="rxe0", peer_dev="rxe0").validate()
    rules = TopologyConfig().rules()
    assert [r.priority for r in rules] == list(RULE_PREFS)
    assert rules[3].selector_args() == ["pref", "4", "to", "198.18.0.2", "lookup", "18770"]


# --- JSON parsing -------------------------------------------------------------------------
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


# --- state file ---------------------------------------------------------------------------
def test_state_file_roundtrip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    st_ = StateFile(path)
    st_.record("netdev", name="rxpw0", peer="rxpw1")
    st_.record("netdev", name="rxpw0", peer="rxpw1")  # idempotent
    loaded = StateFile.load(path)
    assert loaded.created == [{"kind": "netdev", "name": "rxpw0", "peer": "rxpw1",
                               "owner": {"pid": os.getpid(),
                                         "start": loaded.created[0]["owner"]["start"]}}]
    assert loaded.owns_netdev("rxpw1") and not loaded.owns_netdev("eth0")
    path.write_text('{"schema": 1, "created": [')
    with pytest.raises(TopologyError, match="corrupt") as exc:
        StateFile.load(path)
    assert "rm " in exc.value.fix


# --- names and errors ---------------------------------------------------------------------
def test_names() -> None:
    assert wc_status_name(0) == "SUCCESS"
    assert wc_status_name(2) == "LOC_QP_OP_ERR"
    assert wc_status_name(5) == "WR_FLUSH_ERR"
    assert wc_status_name(12) == "RETRY_EXC_ERR"
    assert wc_status_name(99) == "STATUS_99"
    assert wc_opcode_name(128) == "RECV"
    assert async_event_name(10) == "PORT_ERR" and async_event_name(8) == "DEVICE_FATAL"


def test_oserror_carries_errno_text() -> None:
    class FakeVerbsError(Exception):
        error_code = 95

    err = oserror_to("create QP", FakeVerbsError("boom"))
    assert type(err).__name__ == "NotSupported" and err.errno == 95
    assert "95] Operation not supported" in str(err)
    err2 = oserror_to("open", OSError(2, "x"))
    assert isinstance(err2, OsCallError) and "No such file" in str(err2)
    assert struct.calcsize("<Q") == 8


# --- CLI parsing --------------------------------------------------------------------------
def test_cli_vm_passes_its_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import main as cli_main
    from harness.vm import command_line as vm_command_line

    seen: list[list[str]] = []
    monkeypatch.setattr(vm_command_line, "main", lambda argv, prog="": seen.append(argv) or 7)
    assert cli_main.main(["vm", "--timeout-s", "5", "--", "true"]) == 7
    assert seen == [["--timeout-s", "5", "--", "true"]]


def test_cli_bad_mode_names_its_source(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main as cli_main

    monkeypatch.setenv("RXE_POWER_MODE", "sideways")
    assert cli_main.main(["run"]) == cli_main.HARNESS_ERROR_EXIT
    assert "environment variable RXE_POWER_MODE" in capsys.readouterr().err


def test_cli_native_mode_without_rxe_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import launch
    from harness.cli import main as cli_main

    monkeypatch.setattr(launch, "native_rxe_available", lambda: (False, "no rdma_rxe here"))
    assert cli_main.main(["test", "--mode", "native"]) == cli_main.HARNESS_ERROR_EXIT
    err = capsys.readouterr().err
    assert "no rdma_rxe here" in err and "--mode vm" in err


def test_test_command_combines_the_host_and_vm_exit_codes() -> None:
    """`rxe-power test` in VM mode runs the pure-logic tests on the host and the rxe tests in
    the guest: one failing part fails the whole; "no tests collected" (5) in one part is
    fine when the other ran."""
    from harness.cli.suite import combined_pytest_exit

    assert combined_pytest_exit(0, 0) == 0
    assert combined_pytest_exit(5, 0) == 0 and combined_pytest_exit(0, 5) == 0
    assert combined_pytest_exit(5, 5) == 5
    assert combined_pytest_exit(1, 0) == 1 and combined_pytest_exit(0, 1) == 1
    assert combined_pytest_exit(5, 2) == 2 and combined_pytest_exit(1, 3) == 1


def test_a_marker_selection_is_split_between_host_and_guest() -> None:
    """`rxe-power test -- -m EXPR`: the caller's expression is kept on both sides, and a
    guest part that cannot select any rxe test boots no guest (it used to run the whole
    selection, pure logic included, in the TCG guest)."""
    from harness.cli.suite import selects_nothing, side_expressions, split_marker_expression

    assert split_marker_expression(["-m", "not rxe", "-q"]) == ("not rxe", ["-q"])
    assert split_marker_expression(["-mslow", "t.py"]) == ("slow", ["t.py"])
    assert split_marker_expression(["-m=a or b", "-m", "c"]) == ("c", [])
    assert split_marker_expression(["tests/rxe/x.py", "-k", "m"]) == (None,
                                                                     ["tests/rxe/x.py", "-k", "m"])
    assert side_expressions(None) == ("not rxe", "rxe")
    assert side_expressions("slow") == ("(slow) and not rxe", "(slow) and rxe")
    assert selects_nothing(side_expressions("not rxe")[1])
    assert not selects_nothing(side_expressions("rxe")[1])
    assert not selects_nothing(side_expressions("slow")[1])  # slow and rxe: a guest test
    assert not selects_nothing(side_expressions("not removal")[1])
    assert selects_nothing(side_expressions("slow and not rxe")[1])


def test_the_guest_collects_only_the_rxe_tests_unless_given_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the pure-logic modules in the guest only to deselect them cost 33 s under
    TCG: with no path of the caller's, the guest gets tests/rxe (tests/conftest.py refuses
    an rxe test anywhere else)."""
    from harness.cli.suite import RXE_TESTS, guest_paths

    monkeypatch.chdir(Path(__file__).parents[2])
    assert guest_paths([]) == [RXE_TESTS] == guest_paths(["-s", "-k", "clients", "-x"])
    assert guest_paths(["--durations", "0", "-p", "no:cacheprovider"]) == [RXE_TESTS]
    assert guest_paths(["tests/rxe/test_power.py", "-s"]) == []
    assert guest_paths(["tests/rxe/test_power.py::test_client_veto_answer"]) == []
    assert guest_paths(["tests/unit"]) == [] == guest_paths(["-k", "clients", "tests"])
