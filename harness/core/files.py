"""Writing files whose names are fixed (table.txt, summary.html, results.jsonl, <json>):
never through a symlink someone planted where the file goes (root runs this).

    atomic_write(path, text)    a whole file: written to a fresh mkstemp name in the
                                target folder, fsynced, then os.replace'd over `path`
                                (rename replaces a planted symlink itself, never its target)
    open_new(path)              a file written as it goes (a results file, a log): opened
                                with O_NOFOLLOW, refused unless a plain file of one link

Both raise OsCallError naming the path, errno and strerror, and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

from harness.core.errors import OsCallError

FILE_MODE = 0o644  # what the harness's results are created with (before the umask)


def _fail(what: str, path: Path, exc: OSError, fix: str = "") -> OsCallError:
    return OsCallError(f"cannot {what} {path}", exc.errno or 0,
                       fix or f"make {path.parent} a folder you can write, or choose "
                       "another path")


def _umasked(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: str | bytes, mode: int = FILE_MODE) -> Path:
    """Write `data` to `path` all at once: a reader sees the old file or the new one, a
    crash leaves no half file, and a symlink at `path` is replaced, not followed."""
    path = Path(path)
    body = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _fail("write", path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fchmod(fh.fileno(), _umasked(mode))
            os.fsync(fh.fileno())
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _fail("write", path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def open_new(path: Path, mode: int = FILE_MODE, append: bool = False, **text: Any) -> IO[str]:
    """Open `path` to write text from the start (created, or emptied if it is a plain file
    of ours), refusing a symlink, a hard link and anything but a plain file. `text`:
    open()'s text options (errors, buffering); the encoding is UTF-8. `append`: keep what
    the file holds and write at its end."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags | (os.O_APPEND if append else 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OsCallError(f"{path} is a symbolic link: refusing to write through it",
                              exc.errno, f"remove {path} (or choose another folder)") from None
        raise _fail("create", path, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OsCallError(f"{path} is not a plain file of one link: refusing to write it",
                              errno.EEXIST, f"remove {path} (or choose another folder)")
        if not append:
            os.ftruncate(fd, 0)
        fh: IO[str] = os.fdopen(fd, "a" if append else "w", encoding="utf-8", **text)
        return fh
    except OSError as exc:
        os.close(fd)
        raise _fail("write", path, exc) from None
    except BaseException:
        os.close(fd)
        raise


def make_dir(path: Path, what: str = "results folder") -> Path:
    """`path` as a folder we can write into (created if missing), or OsCallError saying
    why not: an existing file there, a parent that is a file, no write permission."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OsCallError(f"the {what} {path} is an existing file, not a folder",
                          errno.ENOTDIR, "give a folder (new or existing), not a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"create the {what}", path, exc,
                    "give a folder you can create (its parents must be folders you can "
                    "write)") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OsCallError(f"cannot write into the {what} {path}", errno.EACCES,
                          "give a folder you can write (or fix its permissions)")
    return path
