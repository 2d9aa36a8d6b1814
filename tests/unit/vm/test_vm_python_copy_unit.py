"""harness.vm.python_copy and guest_python_copy.sh: the guest's copy of the Python trees.

The packing runs real tar and zstd on small trees of tmp_path. The guest script runs for
real on this host in a private mount namespace (`unshare -m`, root only), so its
tmpfs and binds vanish with it: what it binds, what it undoes, and that the command
always runs with its own exit status.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.errors import RxePowerError
from harness.vm import python_copy as pc
from harness.vm import runner as vm_runner
from harness.vm.kernel import GuestKernel

SCRIPT_TIMEOUT_S = 60.0  # the guest script on a tiny archive, on this host
needs_tar_zstd = pytest.mark.skipif(shutil.which("tar") is None or shutil.which("zstd") is None,
                                    reason="tar and zstd are not installed (apt-get install "
                                    "tar zstd)")
needs_root_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="the guest script mounts: it runs as root in a private mount namespace (unshare)")


@pytest.fixture
def archive_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "build" / "vm-python"
    monkeypatch.setattr(pc, "ARCHIVE_DIR", folder)
    return folder


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_outermost_keeps_existing_real_trees_not_nested_ones(tmp_path: Path) -> None:
    outer = tree(tmp_path / "venv", {"lib/site-packages/a.py": ""})
    inner = outer / "lib" / "site-packages"
    link = tmp_path / "link"
    link.symlink_to(outer)
    odd = tmp_path / "new\nline"
    odd.mkdir()
    got = pc._outermost([inner, outer, outer, tmp_path / "gone", link, odd, Path("relative")])
    assert got == [outer]


def test_guest_argv_names_each_archive_and_tree_then_the_command(tmp_path: Path) -> None:
    copy = pc.PythonCopy((tmp_path / "a b.tar.zst",), (Path("/usr/lib/python3.11"), tmp_path))
    argv = copy.guest_argv()
    assert argv[:4] == ["sh", str(pc.GUEST_SCRIPT), f"{pc.GUEST_UNPACK_TIMEOUT_S:g}",
                        pc.GUEST_ROOT]
    assert argv[4:] == ["-a", str(tmp_path / "a b.tar.zst"), "-t", "/usr/lib/python3.11",
                        "-t", str(tmp_path), "--"]
    req = vm_runner.VmRequest(command=["pytest", "-x"], rw_dirs=[tmp_path],
                              log_path=tmp_path / "c.log", cwd=tmp_path)
    k = GuestKernel(version="6.1.0-9-amd64", vmlinuz=tmp_path / "vmlinuz",
                    modules_dir=tmp_path)
    vng = vm_runner.build_vng_argv(req, k, "tcg", "/v/bin/vng", copy)
    words = shlex.split(vng[-1])[:-vm_runner.EXIT_MARK_WORD_COUNT]  # (the exit mark after)
    assert words[-len(argv) - 2:] == [*argv, "pytest", "-x"]


def test_the_shared_trees_are_this_interpreters() -> None:
    trees = pc.shared_trees()
    assert Path(os.path.realpath(sys.executable)) in trees
    assert any(t.name.startswith("python3") for t in trees)
    assert all(not a.is_relative_to(b) for a in trees for b in trees if a != b)


@needs_tar_zstd
def test_an_archive_is_made_once_left_out_what_is_excluded_and_remade_on_change(
        tmp_path: Path, archive_dir: Path) -> None:
    src = tree(tmp_path / "venv", {"lib/site-packages/ok/m.py": "x = 1\n",
                                   "lib/site-packages/mypy/big.py": "",
                                   "lib/site-packages/ok/tests/test_m.py": "",
                                   "bin/ruff": "elf"})
    first = pc._archive("code", [src], deep=True)
    names = subprocess.run(["tar", "--zstd", "-tf", str(first)], capture_output=True,
                           text=True, check=True, timeout=SCRIPT_TIMEOUT_S).stdout.split()
    rel = str(src.relative_to("/"))
    assert f"{rel}/lib/site-packages/ok/m.py" in names
    assert not [n for n in names if "/mypy" in n or "/tests" in n or n.endswith("bin/ruff")]
    assert pc._archive("code", [src], deep=True) == first  # unchanged: the same archive
    (src / "lib/site-packages/ok/m.py").write_text("x = 2\n")
    os.utime(src / "lib/site-packages/ok/m.py", ns=(1, 1))
    second = pc._archive("code", [src], deep=True)
    assert second != first
    assert first.exists()  # a run may still be unpacking it: removed only when stale
    old = time.time() - pc.STALE_ARCHIVE_S - 60
    os.utime(first, (old, old))
    (src / "lib/site-packages/ok/n.py").write_text("")
    third = pc._archive("code", [src], deep=True)
    assert not first.exists() and second.exists() and third.exists()


def test_a_symlinked_archive_folder_is_refused(tmp_path: Path, archive_dir: Path) -> None:
    archive_dir.parent.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    archive_dir.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RxePowerError, match="not a folder owned"):
        pc.archive_dir()


def test_without_zstd_there_is_no_copy_and_the_reason_says_the_fix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pc.shutil, "which", lambda name: None)
    copy, why = pc.prepare_python_copy()
    assert copy is None and "apt-get install tar zstd" in why


def run_script(tmp_path: Path, archives: list[Path], trees: list[Path],
               command: str) -> subprocess.CompletedProcess[str]:
    argv = ["unshare", "--mount", "--propagation", "private", "sh", str(pc.GUEST_SCRIPT), "30",
            str(tmp_path / "copyroot")]
    for a in archives:
        argv += ["-a", str(a)]
    for t in trees:
        argv += ["-t", str(t)]
    return subprocess.run([*argv, "--", "sh", "-c", command], capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S)


@needs_tar_zstd
@needs_root_unshare
def test_the_guest_script_binds_the_copies_and_runs_the_command(
        tmp_path: Path, archive_dir: Path) -> None:
    src = tree(tmp_path / "pkg", {"mod.py": "copied\n"})
    archive = pc._archive("code", [src], deep=True)
    done = run_script(tmp_path, [archive], [src],
                      f"findmnt -n -o FSTYPE --target {src}; cat {src}/mod.py; "
                      f"touch {src}/written-in-the-copy; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout.split() == ["tmpfs", "copied"]
    assert "1 Python trees copied into guest memory" in done.stderr
    assert not (src / "written-in-the-copy").exists()  # it went to the copy, not the tree


@needs_tar_zstd
@needs_root_unshare
def test_the_guest_script_undoes_its_binds_and_runs_on_the_tree_when_a_copy_fails(
        tmp_path: Path, archive_dir: Path) -> None:
    src = tree(tmp_path / "pkg", {"mod.py": "host\n"})
    archive = pc._archive("code", [src], deep=True)
    missing = tmp_path / "not-packed"
    missing.mkdir()
    done = run_script(tmp_path, [archive], [src, missing],
                      f"findmnt -n -o FSTYPE --target {src}; touch {src}/written; exit 3")
    assert done.returncode == 3, done.stderr
    assert "tmpfs" not in done.stdout  # the bind of src was undone
    assert f"read from the shared folder (slower): {missing} is not in the archives" \
        in done.stderr
    assert (src / "written").exists()
    done = run_script(tmp_path, [tmp_path / "no.tar.zst"], [src], "exit 0")
    assert done.returncode == 0
    assert f"unpacking {tmp_path / 'no.tar.zst'} failed" in done.stderr


def test_a_long_guest_command_is_handed_over_as_a_script(archive_dir: Path) -> None:
    """The kernel command line that carries the command is cut at 2048 bytes (a cut one
    hung the boot): a long command goes over as a script file the guest runs."""
    assert vm_runner.exec_argument("echo hi") == ("echo hi", None)
    long_cmd = "cd / && exec env A=" + "x" * 900 + " sh -c 'printf %s \"$A\" | wc -c'"
    inline, script = vm_runner.exec_argument(long_cmd)
    assert script is not None and script.parent == archive_dir
    assert len(inline) <= vm_runner.EXEC_INLINE_MAX_CHARS
    assert script.read_text() == long_cmd + "\n"
    done = subprocess.run(shlex.split(inline), capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S)
    assert done.stdout.strip() == "900", done
