"""The guest's copy of this host's Python trees, in guest memory.

The guest sees the host's root over 9p with no cache: under TCG every stat and open of
a file there is a round trip through the emulated virtio device. Python imports open
and stat thousands of files, so the suite's Python starts dominated its time (measured
in the guest, TCG: `import harness.cli.main` 20.1 s from the shared root, 3.3-3.9 s
from a tmpfs copy; pytest collecting tests/rxe 48.6 s, then 9.4-11.5 s; a bare
`python -c pass` 1.8-3.0 s, then 0.7-1.0 s).

So the host packs the trees the guest imports from into zstd tar archives in
build/vm-python/: the interpreter, its standard library, the system site directories
and the venv in one archive kept while they do not change (`shared`), our own packages
in one archive made for each run (`code`). In the guest, guest_python_copy.sh unpacks
them into a tmpfs and binds each tree over its own path before the command starts: the
same paths, the same files, so nothing else changes. A tree we never read in the guest
(the static-check tools, test suites of third-party packages) is left out of the
archive (EXCLUDES). Whatever goes wrong on either side, the guest runs the command on
the shared tree as before and says why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import BoundExceeded, RxePowerError
from harness.core.proc import PACKAGES_ROOT, run_bounded

GUEST_SCRIPT = Path(__file__).with_name("guest_python_copy.sh")
ARCHIVE_DIR = PACKAGES_ROOT / "build" / "vm-python"
GUEST_ROOT = "/run/rxe-power-python"  # the tmpfs in the guest (its /run is the guest's own)
ARCHIVE_TIMEOUT_S = 180.0  # tar + zstd of the shared trees on the host (about 2 s here)
GUEST_UNPACK_TIMEOUT_S = 180.0  # each archive's unpacking in the guest (15-30 s under TCG)
CODE_PACKAGES = ("harness", "clients", "power", "tests")
STALE_ARCHIVE_S = 3600.0  # an older archive of ours is removed after this (a run may use it)
_PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
# Never read in the guest: the static checks run on the host; third-party test suites,
# IDLE, tkinter, 2to3 and the static libpython are not imported by anything of ours.
EXCLUDES = (
    "site-packages/mypy", "site-packages/mypyc", "*__mypyc*.so", "site-packages/pip",
    "dist-packages/pip", "bin/ruff", "site-packages/importlinter", "site-packages/grimp",
    "site-packages/*/tests", "dist-packages/*/tests", f"{_PY}/test", f"{_PY}/idlelib",
    f"{_PY}/tkinter", f"{_PY}/turtledemo", f"{_PY}/ensurepip", f"{_PY}/lib2to3",
    f"{_PY}/config-*", "__pycache__/*.opt-?.pyc",
)


@dataclass(frozen=True)
class PythonCopy:
    """What the guest unpacks (archives) and binds over its own path (trees)."""

    archives: tuple[Path, ...]
    trees: tuple[Path, ...]

    def guest_argv(self) -> list[str]:
        """The words before the guest command: guest_python_copy.sh and its arguments."""
        argv = ["sh", str(GUEST_SCRIPT), f"{GUEST_UNPACK_TIMEOUT_S:g}", GUEST_ROOT]
        for a in self.archives:
            argv += ["-a", str(a)]
        for t in self.trees:
            argv += ["-t", str(t)]
        return [*argv, "--"]


def shared_trees() -> list[Path]:
    """The interpreter binary, the standard library, the site directories on sys.path
    and the venv: each an existing absolute path, none inside another."""
    paths = sysconfig.get_paths()
    found = [Path(os.path.realpath(sys.executable)), Path(paths["stdlib"]),
             Path(paths["platstdlib"])]
    if sys.prefix != sys.base_prefix:
        found.append(Path(sys.prefix))
    found += [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return _outermost(found)


def code_trees() -> list[Path]:
    return _outermost([PACKAGES_ROOT / name for name in CODE_PACKAGES])


def _outermost(paths: list[Path]) -> list[Path]:
    """Existing absolute paths, deduplicated, without any that lies inside another."""
    real = []
    for p in paths:
        if p.is_absolute() and p.exists() and not p.is_symlink() and "\n" not in str(p):
            real.append(p.absolute())
    real = sorted(set(real))
    return [p for p in real if not any(q != p and p.is_relative_to(q) for q in real)]


def _key(trees: list[Path], deep: bool) -> str:
    """Changes when a tree changes: every file's size and mtime (deep), else each tree's
    and its direct entries' (a package installed, removed or upgraded changes those)."""
    h = hashlib.sha256(f"{sys.version}\n{EXCLUDES}\n".encode())
    for tree in trees:
        walk = (tree.rglob("*") if deep else tree.iterdir()) if tree.is_dir() else iter(())
        for p in sorted([tree, *walk]):
            try:
                st = p.lstat()
            except OSError:
                continue
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def archive_dir() -> Path:
    """build/vm-python: created as a real folder of ours (a symlink there is refused)."""
    ARCHIVE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = ARCHIVE_DIR.lstat()
    if ARCHIVE_DIR.is_symlink() or not ARCHIVE_DIR.is_dir() or st.st_uid != os.geteuid():
        raise RxePowerError(f"{ARCHIVE_DIR} is not a folder owned by uid {os.geteuid()}",
                            f"remove {ARCHIVE_DIR}; it is made again")
    return ARCHIVE_DIR


def _archive(kind: str, trees: list[Path], deep: bool) -> Path:
    """build/vm-python/<kind>-<key>.tar.zst of `trees`, made unless it exists; the other
    archives of that kind (ours, by name) are removed once STALE_ARCHIVE_S old (a guest
    started a moment ago may still be unpacking one)."""
    folder = archive_dir()
    path = folder / f"{kind}-{_key(trees, deep)}.tar.zst"
    if path.is_file() and not path.is_symlink():
        return path
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    argv = ["tar", "--create", "--zstd", f"--file={tmp}", "--directory=/",
            *(f"--exclude={e}" for e in EXCLUDES), "--",
            *(str(t.relative_to("/")) for t in trees)]
    try:
        done = run_bounded(argv, ARCHIVE_TIMEOUT_S, step=f"packing the guest's {kind} trees",
                           bound_name="ARCHIVE_TIMEOUT_S", outstanding=" ".join(argv[:3]))
        if done.returncode != 0:
            raise RxePowerError(f"tar exited {done.returncode}: {done.stderr.strip()[-300:]}",
                                "see the message; the guest reads the shared tree meanwhile")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for old in folder.glob(f"{kind}-*.tar.zst"):
        st = old.lstat()
        if old != path and old.is_file() and not old.is_symlink() and \
                time.time() - st.st_mtime > STALE_ARCHIVE_S:
            old.unlink(missing_ok=True)
    return path


def prepare_python_copy() -> tuple[PythonCopy | None, str]:
    """The copy for this run and what was done, or None and why there is none."""
    if shutil.which("zstd") is None or shutil.which("tar") is None:
        return None, "tar or zstd is not installed (fix: apt-get install tar zstd)"
    shared, code = shared_trees(), code_trees()
    try:
        archives = (_archive("shared", shared, deep=False), _archive("code", code, deep=True))
    except (OSError, RxePowerError, BoundExceeded) as exc:
        return None, f"packing them failed: {exc}"
    size_mib = sum(a.stat().st_size for a in archives) / 2**20
    return (PythonCopy(archives, tuple(shared + code)),
            f"{len(shared) + len(code)} trees in {size_mib:.0f} MiB of archives")
