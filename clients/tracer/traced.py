"""Run a program that is not ours under the verbs tracer (clients/tracer/).

The tracer is a shared object built by ci/build-tracer.sh (from ci/bootstrap.sh) into
build/tracer/; it is loaded with LD_PRELOAD and writes one log per process into a
directory that must exist, belong to the caller and not be writable by others (the
tracer refuses, loudly, with exit status 125, anything else).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.core import proc
from harness.core.errors import OsCallError, RxePowerError
from harness.core.state import StateFile

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "build" / "tracer"
TRACER_LIB = BUILD_DIR / "librxe_power_trace.so"
ENV_DIR = "RXE_POWER_TRACE_DIR"
ENV_MAX_MB = "RXE_POWER_TRACE_MAX_MB"


def tracer_library() -> Path:
    if not TRACER_LIB.is_file():
        raise RxePowerError(f"the verbs tracer {TRACER_LIB} is not built",
                            "run: bash ci/build-tracer.sh (needs gcc and libibverbs-dev)")
    return TRACER_LIB


def example_program(name: str) -> Path:
    """A C example from examples/, built next to the tracer."""
    path = BUILD_DIR / name
    if not path.is_file():
        raise RxePowerError(f"the example program {path} is not built",
                            "run: bash ci/build-tracer.sh")
    return path


def make_trace_dir(path: Path) -> Path:
    """Create PATH (mode 0700, ours) for the logs. An existing path is refused: the logs
    of one run must not mix with another's, and a path put there by someone else (a
    symbolic link into a directory we should not write) must not be followed."""
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        raise OsCallError(f"mkdir {path} for the tracer's logs", e.errno or errno.EIO,
                          "give a path that does not exist yet, under a directory you own") \
            from e
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RxePowerError(f"{path}: not a private directory of ours after mkdir "
                            f"(mode {oct(st.st_mode)}, owner {st.st_uid})",
                            "use a path on a file system that honours modes (tmpfs, ext4)")
    return path


def traced_env(trace_dir: Path, base: dict[str, str] | None = None,
               max_mb: int | None = None) -> dict[str, str]:
    """The environment for a traced program: LD_PRELOAD gets the tracer first."""
    env = dict(os.environ if base is None else base)
    pre = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{tracer_library()}" + (f":{pre}" if pre else "")
    env[ENV_DIR] = str(Path(trace_dir).resolve())
    if max_mb is not None:
        env[ENV_MAX_MB] = str(int(max_mb))
    return env


@contextlib.contextmanager
def recorded_work_dir(what: str) -> Iterator[Path]:
    """A private directory for tracer logs under the run directory (a tmpfs: the tracer
    maps its log shared, which 9p, the VM's shared project folder, cannot), recorded in
    the state file while it exists, so that `rxe-power cleanup` removes a killed run's;
    removed afterwards. WHAT names the user in the directory's name."""
    proc.RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{what}-{os.getpid()}-", dir=proc.RUN_DIR))
    state = StateFile.load()
    state.record("dir", path=str(work))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        state.forget("dir", path=str(work))
