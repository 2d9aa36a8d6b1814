"""Error types. Every message names the problem and the fix."""

from __future__ import annotations

import errno as errno_mod
import os


class RxePowerError(Exception):
    """Base error: `problem` says what is wrong, `fix` says what to do about it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}" + (f"\n  fix: {fix}" if fix else ""))


class OsCallError(RxePowerError):
    """A system or verbs call failed with an errno; carries errno and strerror text."""

    def __init__(self, what: str, err: int, fix: str = "") -> None:
        self.errno = err
        self.strerror = os.strerror(err) if err else "unknown error"
        name = errno_mod.errorcode.get(err, str(err))
        super().__init__(f"{what}: [{name} {err}] {self.strerror}", fix)


class NotSupported(OsCallError):
    """EOPNOTSUPP / ENOTSUP from the verbs layer; tests turn this into a skip in one place."""


class BoundExceeded(RxePowerError):
    """A bounded blocking step ran out of time; `outstanding` says what was still pending."""

    def __init__(self, step: str, bound_name: str, bound_s: float, outstanding: str) -> None:
        self.step = step
        self.bound_name = bound_name
        self.bound_s = bound_s
        self.outstanding = outstanding
        super().__init__(
            f"{step} did not finish within {bound_name}={bound_s:g}s; outstanding: {outstanding}",
            f"raise {bound_name} if the machine is slow, or look at what is outstanding",
        )


class NoRxe(RxePowerError):
    """No usable rdma_rxe here (module missing, not root, no devices)."""


class TopologyError(RxePowerError):
    """The two-HCA topology cannot be built, found, or removed."""


class NotOurs(TopologyError):
    """Refused to touch an object that the harness did not create."""


class ProtocolError(RxePowerError):
    """A malformed, oversized or unexpected control message. `msg_id` is the id of the
    message it concerns when that could be read, else 0 (an error reply uses it)."""

    def __init__(self, problem: str, fix: str = "", msg_id: int = 0) -> None:
        self.msg_id = msg_id
        super().__init__(problem, fix)


class NoHandler(ProtocolError):
    """A server got a name (a request's event, a plan's step) it has no handler for
    (harness.core.handlers)."""


class FramingError(ProtocolError):
    """The byte stream lost its framing: a line grew past the size limit without a newline.
    `lines` holds the complete lines that came before it in the same read (still valid)."""

    def __init__(self, problem: str, fix: str = "", lines: list[bytes] | None = None) -> None:
        self.lines = lines or []
        super().__init__(problem, fix)


class ProcError(RxePowerError):
    """A /proc file of a process that is still there could not be read, or does not read as
    the kernel writes it (harness.core.procfs). A process that is gone is no error."""


class ProcUnreadable(OsCallError, ProcError):
    """Reading a /proc file failed with an errno other than "gone" (EACCES, EIO...)."""


class ProcFormatError(ProcError):
    """A /proc file's text is not in the kernel's format (a malformed or cut line)."""


class SettingError(RxePowerError):
    """A bad option value; the message says where the value came from."""


def oserror_to(what: str, exc: BaseException, fix: str = "") -> OsCallError:
    """Turn an OSError or a PyverbsRDMAError into an OsCallError (or NotSupported)."""
    err = getattr(exc, "error_code", None)
    if err is None or err == -1:  # pyverbs uses -1 for "no errno"
        err = getattr(exc, "errno", None) or 0
    err = abs(int(err))
    cls = NotSupported if err in (errno_mod.EOPNOTSUPP, errno_mod.ENOTSUP) else OsCallError
    out = cls(f"{what} ({exc})", err, fix)
    out.__cause__ = exc
    return out
