"""Issue 17 #9: notify does not trust the clients folder's mode alone. A clients folder
not owned by the caller, writable by others, or a symlink is refused; each socket's peer
credentials (SO_PEERCRED) must be in the allow-list (default: root and the caller)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.core import settings
from harness.core.errors import RxePowerError, SettingError
from power.notify import AnswerKind, ClientEndpoint, Notifier, SuspendReply

NOBODY = 65534
SERVER_READY_TIMEOUT_S = 10.0  # the nobody server's socket appears


def _vetoer(cdir: Path) -> ClientEndpoint:
    ep = ClientEndpoint("vetoer", lambda t, d: SuspendReply.veto("mine"), lambda t, d: None,
                        clients_dir=cdir)
    ep.serve_in_thread()
    return ep


def test_a_peer_not_in_the_allow_list_is_not_heard(tmp_path: Path) -> None:
    cdir = tmp_path / "c"
    with _vetoer(cdir):
        (ans,) = Notifier(cdir, allowed_uids=frozenset({os.geteuid() + 4242})) \
            .suspend_prepare("standby", 5.0)
        assert ans.kind is AnswerKind.ERROR and f"uid {os.geteuid()}" in ans.reason
        assert "RXE_POWER_NOTIFY_UIDS" in ans.reason
        (ans,) = Notifier(cdir).suspend_prepare("standby", 5.0)  # default: the caller
        assert ans.kind is AnswerKind.VETO and ans.reason == "mine"


SERVER = textwrap.dedent("""
    import os, socket, sys
    from harness.core.protocol import Message, decode, encode_checked
    from harness.core.schemas import ChannelKind
    path = sys.argv[1]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path + ".tmp")
    os.setgroups([]); os.setgid(%(nobody)d); os.setuid(%(nobody)d)
    s.listen(4)  # the peer credentials are taken here: nobody's
    print("ready", flush=True)
    conn, _ = s.accept()
    msg = decode(conn.recv(65536).split(b"\\n")[0], ChannelKind.NOTICE)
    conn.sendall(encode_checked(Message("veto", {"reason": "nobody says no"}, msg.id),
                                ChannelKind.NOTICE))
""") % {"nobody": NOBODY}


def test_a_socket_served_by_nobody_cannot_veto_roots_sleep(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a server as nobody")
    cdir = tmp_path / "c"
    cdir.mkdir(mode=0o700)
    sock = cdir / "evil.1.sock"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(sock)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parents[3])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        os.rename(str(sock) + ".tmp", sock)  # the name the notifier lists
        (ans,) = Notifier(cdir).suspend_prepare("standby", 5.0)
        assert ans.kind is AnswerKind.ERROR, ans
        assert f"uid {NOBODY}" in ans.reason and "not allowed" in ans.reason
    finally:
        proc.kill()
        proc.wait(SERVER_READY_TIMEOUT_S)


def test_a_clients_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    cdir = tmp_path / "c"
    with _vetoer(cdir):
        cdir.chmod(0o777)
        with pytest.raises(RxePowerError, match=r"writable by others(.|\n)*fix: .*chmod"):
            Notifier(cdir).suspend_prepare("standby", 5.0)


def test_a_clients_folder_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the folder away")
    cdir = tmp_path / "c"
    with _vetoer(cdir):
        os.chown(cdir, NOBODY, NOBODY)
        with pytest.raises(RxePowerError, match=f"owned by uid {NOBODY}"):
            Notifier(cdir).suspend_prepare("standby", 5.0)


def test_a_clients_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    with _vetoer(real):
        (tmp_path / "c").symlink_to(real)
        with pytest.raises(RxePowerError, match="symbolic link"):
            Notifier(tmp_path / "c").suspend_prepare("standby", 5.0)


def test_notify_uids_setting() -> None:
    assert settings.notify_uids({}) == frozenset({0, os.geteuid()})
    assert settings.notify_uids({"RXE_POWER_NOTIFY_UIDS": "0, 1000,root"}) == \
        frozenset({0, 1000})
    for bad in ("-1", "x-no-such-user-x", "1,,2x"):
        with pytest.raises(SettingError, match="RXE_POWER_NOTIFY_UIDS"):
            settings.notify_uids({"RXE_POWER_NOTIFY_UIDS": bad})


def test_no_clients_folder_is_still_no_clients(tmp_path: Path) -> None:
    t0 = time.monotonic()
    assert Notifier(tmp_path / "absent").suspend_prepare("standby", 5.0) == []
    assert time.monotonic() - t0 < 1.0
