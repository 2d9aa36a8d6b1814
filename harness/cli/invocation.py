"""One Invocation: what a command of rxe-power runs, decided once, on the host.

    inv = invoke(args, job, results, out, what)   # the mode and why, the removal mode and
                                                  # why, the results folder: said to `out`
    run_invocation(inv, out)                      # harness.cli.operations: here or in the VM

A command parses its options into a typed Job (the spec of its run: a MatrixSpec, a
TransitionRequest, pytest's arguments ...), and `invoke` adds where it runs and why
(native or VM), the removal mode and why (stock rdma_rxe or our build), the results
folder, the VM bound and the source tree. Nothing of it is decided again: natively the
operations run it in this process; the VM hands it to the guest as a file in the results
folder (`write_invocation`), which the guest, as root, reads only when it is a plain file
of the caller's or root's that nobody else may write (`read_invocation`). The process that
runs it hands the record to its provenance (`launch_facts`: the results header's mode,
reasons and command line).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from harness.cli import launch
from harness.cli.peer_option import choose_peer
from harness.cli.removal import choose_removal, choose_suite_removal
from harness.core.errors import OsCallError, RxePowerError
from harness.core.files import atomic_write
from harness.core.printer import Printer
from harness.core.settings import Mode, PeerPlacement, RemovalMode
from harness.system.provenance import JsonReader, LaunchFacts, SourceTree
from harness.system.provenance_collect import Sources, tree_facts

INVOCATION_SCHEMA = 1
MAX_INVOCATION_BYTES = 1 << 20  # a matrix's invocation is ~2 KB
INVOCATION_FIX = ("run the command again on the host (rxe-power COMMAND --mode vm): the guest "
                  "reads only the invocation file its host wrote")


class Job:
    """The typed spec of one command's run, and how it runs (the commands' subclasses).

    KIND names it in the invocation file; LOADS_MODULE: the run loads the rdma_rxe of its
    removal mode before it starts (not `test`: its pytest plugin does); USES_TOPOLOGY: a
    native run holds the run lock; LOG_NAME: the guest's console log in the results
    folder; RECORD_NAME: the invocation file there."""

    KIND: ClassVar[str] = ""
    LOADS_MODULE: ClassVar[bool] = True
    USES_TOPOLOGY: ClassVar[bool] = True
    LOG_NAME: ClassVar[str] = "vm-console.log"
    RECORD_NAME: ClassVar[str] = "invocation.json"

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        raise NotImplementedError

    def run_here(self, inv: Invocation, out: Printer) -> int:
        """Run it in this process, on this kernel (the host's, or the guest's)."""
        raise NotImplementedError

    def promised(self, inv: Invocation) -> tuple[Path, ...]:
        """The files a run must leave (a VM run's exit 0 without one is an error)."""
        return ()

    def host_part(self, inv: Invocation, out: Printer) -> tuple[Job | None, int | None]:
        """VM mode, on the host before the boot: the job the guest runs (None: no guest)
        and the exit code of a part run here (None: none)."""
        return self, None

    def after_guest(self, inv: Invocation, host_code: int | None, guest_code: int,
                    out: Printer) -> int:
        """VM mode, on the host after the guest: the command's exit code."""
        return guest_code

    def finish(self, inv: Invocation, code: int, out: Printer) -> int:
        """On the host once the run is over, native or VM (never in the guest)."""
        return code

    def peer_guest_problem(self, command: str) -> str | None:
        """Why this run cannot have its peer in its own guest (None: it can)."""
        return f"no scenario of rxe-power {command} runs with the peer in its own guest yet"


JobTypes: TypeAlias = "dict[str, type[Job]]"


@dataclass(frozen=True)
class Invocation:
    command: str  # the rxe-power command: run, matrix, stress, bench, check, transition, test
    command_line: str  # as the user gave it, for the record
    job: Job
    mode: Mode  # NATIVE or VM, never AUTO
    mode_reason: str
    removal: RemovalMode | None  # None: `test` without one (the suite's own default)
    removal_reason: str
    results: Path  # the results folder: every artefact of the run, the console log included
    timeout_s: float  # the bound on a VM run
    tree: SourceTree  # the rxe-power tree it ran from (read on the host)
    peer_reason: str = ""  # the peer's placement and why (harness.cli.peer_option); "": none
    peer: PeerPlacement = PeerPlacement.SAME_KERNEL  # where the peer HCA lives

    def launch_facts(self) -> LaunchFacts:
        """What the results header records of it (harness.system.provenance)."""
        return LaunchFacts(self.mode, self.mode_reason, self.tree, self.command_line,
                           self.removal_reason, self.removal, self.peer_reason, self.peer)

    @property
    def record_path(self) -> Path:
        return self.results / self.job.RECORD_NAME

    @property
    def log_path(self) -> Path:
        return self.results / self.job.LOG_NAME

    def to_json(self) -> dict[str, Any]:
        return {"schema": INVOCATION_SCHEMA, "command": self.command,
                "command_line": self.command_line,
                "job": {"kind": self.job.KIND, **self.job.to_json()},
                "mode": self.mode.value, "mode_reason": self.mode_reason,
                "removal": self.removal.value if self.removal else None,
                "removal_reason": self.removal_reason, "results": str(self.results),
                "timeout_s": self.timeout_s,
                "tree": {"commit": self.tree.commit, "dirty": self.tree.dirty,
                         "problem": self.tree.problem},
                "peer_reason": self.peer_reason, "peer": self.peer.value}

    @classmethod
    def from_json(cls, d: object, jobs: JobTypes) -> Invocation:
        """The Invocation `to_json` wrote; RxePowerError naming the first bad field."""
        r = JsonReader(d, "invocation")
        if r.get("schema") != INVOCATION_SCHEMA:
            raise RxePowerError(f"invocation.schema is {str(r.get('schema'))[:20]!r}, not "
                                f"{INVOCATION_SCHEMA}", INVOCATION_FIX)
        job = r.sub("job")
        kind = job.text("kind")
        if kind not in jobs:
            raise RxePowerError(f"invocation.job.kind {kind!r} is none of "
                                f"{', '.join(sorted(jobs))}", INVOCATION_FIX)
        mode = r.enum("mode", Mode)
        if mode is Mode.AUTO:
            raise RxePowerError("invocation.mode is auto", "a run is native or vm")
        results = Path(r.text("results"))
        if not results.is_absolute() or "\0" in str(results):
            raise RxePowerError(f"invocation.results {str(results)!r} is not an absolute path",
                                INVOCATION_FIX)
        timeout_s = r.get("timeout_s")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) \
                or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise RxePowerError(f"invocation.timeout_s {timeout_s!r} is not a bound above 0",
                                INVOCATION_FIX)
        t = r.sub("tree")
        tree = SourceTree(t.opt_str("commit"), t.opt_bool("dirty"), t.text("problem"))
        try:
            spec = jobs[kind].from_json({k: v for k, v in job.d.items() if k != "kind"})
        except (KeyError, TypeError, ValueError) as exc:
            raise RxePowerError(f"invocation.job ({kind}) is not one rxe-power wrote: "
                                f"{type(exc).__name__} {exc}", INVOCATION_FIX) from None
        removal = r.d.get("removal")
        return cls(r.text("command"), r.text("command_line"), spec, mode,
                   r.text("mode_reason"),
                   None if removal is None else r.enum("removal", RemovalMode),
                   r.text("removal_reason"), results, float(timeout_s), tree,
                   r.text("peer_reason") if "peer_reason" in r.d else "",
                   r.enum("peer", PeerPlacement) if "peer" in r.d else PeerPlacement.SAME_KERNEL)


def mode_of(args: argparse.Namespace) -> Mode:
    """The mode `invoke` will choose for `args` (what --jobs needs to know before it splits
    the command into shards, each of which is then invoked as a VM command)."""
    return launch.choose_mode(args.mode)[0]


def invoke(args: argparse.Namespace, job: Job, results: Path, out: Printer,
           what: str | None = None,
           peer: tuple[PeerPlacement, str] | None = None) -> Invocation:
    """The command `args` with its `job`: the mode and the removal mode chosen, once, each
    said to `out` with its reason (a removal the run loads natively is said with its
    module's report, when it is loaded: harness.cli.operations). `what`: what will run,
    said with the results folder. `peer`: the placement decided already, and why (a run
    split by placement: harness.cli.split_run); else --peer's, checked here."""
    mode, mode_reason = launch.choose_mode(args.mode)
    say = out.prefixed(f"rxe-power {args.command}: ")
    say(f"mode {mode.value} ({mode_reason})"
        + (f"; {what}; results in {results}" if what is not None else ""))
    if job.LOADS_MODULE:
        removal: RemovalMode | None
        removal, removal_reason = choose_removal(getattr(args, "removal", None), mode, out)
    else:
        removal, removal_reason = choose_suite_removal(getattr(args, "removal", None), mode,
                                                       out)
    if removal is not None and (mode is Mode.VM or not job.LOADS_MODULE):
        say(f"removal mode {removal} ({removal_reason})"
            + ("; the guest loads its rdma_rxe" if job.LOADS_MODULE else ""))
    peer_reason, placement = "", PeerPlacement.SAME_KERNEL
    if hasattr(args, "peer"):  # the commands that run scenarios (--peer)
        placement, why = peer or choose_peer(args.peer, mode, args.command,
                                             job.peer_guest_problem(args.command))
        if peer is not None and placement is PeerPlacement.GUEST:
            choose_peer("guest", mode, args.command, job.peer_guest_problem(args.command))
        peer_reason = f"{placement.value}: {why}"
        say(f"peer {placement.value} ({why})")
    return Invocation(args.command, shlex.join(["rxe-power", *getattr(args, "argv",
                                                                      [args.command])]),
                      job, mode, mode_reason, removal, removal_reason, results.absolute(),
                      float(args.timeout_s), tree_facts(Sources()), peer_reason, placement)


def write_invocation(inv: Invocation) -> Path:
    """The invocation file the guest runs (and the record of the run), in its results
    folder; written whole, never through a planted link, not writable by others."""
    return atomic_write(inv.record_path, json.dumps(inv.to_json(), indent=1) + "\n",
                        mode=0o644)


def _refuse(path: Path, problem: str, code: int = errno.EPERM) -> OsCallError:
    return OsCallError(f"the invocation file {path} {problem}: refusing to run it", code,
                       INVOCATION_FIX)


def read_invocation(path: Path, owner_uid: int, jobs: JobTypes) -> Invocation:
    """The invocation at `path`, read as root in the guest: only a plain file (no symbolic
    link, one link) of `owner_uid` (the host's caller) or root, that nobody else may write,
    of at most MAX_INVOCATION_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link", exc.errno) from None
        raise OsCallError(f"cannot open the invocation file {path}", exc.errno or 0,
                          INVOCATION_FIX) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "is not a plain file")
        if st.st_nlink != 1:
            raise _refuse(path, f"has {st.st_nlink} links")
        if st.st_uid not in (0, owner_uid):
            raise _refuse(path, f"is owned by uid {st.st_uid}, not root or uid {owner_uid} "
                          "(who ran the command)")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _refuse(path, f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})")
        data = fh.read(MAX_INVOCATION_BYTES + 1)
    if len(data) > MAX_INVOCATION_BYTES:
        raise _refuse(path, f"is over MAX_INVOCATION_BYTES={MAX_INVOCATION_BYTES}",
                      errno.EFBIG)
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise RxePowerError(f"the invocation file {path} is not JSON: {exc}",
                            INVOCATION_FIX) from None
    return Invocation.from_json(raw, jobs)
