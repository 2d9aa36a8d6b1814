"""A helper child process that reports one JSON object per stdout line, read with bounds."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

STOP_TIMEOUT_S = 10.0


class JsonChild:
    """Popen with stdin/stdout pipes; `wait_for(event)` returns the first line whose
    "event" is `event`, within a bound, and names everything said so far when it fails."""

    def __init__(self, argv: list[str], what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.pid = self.proc.pid
        self.lines: list[dict] = []
        self.inbox: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.inbox.put(json.loads(line))
            except ValueError:
                self.inbox.put({"event": "unparsable", "line": line})
        self.inbox.put(None)  # EOF

    def wait_for(self, event: str, timeout_s: float) -> dict:
        for rec in self.lines:
            if rec.get("event") == event:
                return rec
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                rec = self.inbox.get(timeout=left)
            except queue.Empty:
                break
            if rec is None:
                break
            self.lines.append(rec)
            if rec.get("event") == event:
                return rec
        raise AssertionError(f"{self.what} pid {self.pid} never said {event!r} within "
                             f"{timeout_s:g} s (exit {self.proc.poll()}); said {self.lines}")

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.what} pid {self.pid} did not exit within "
                                 f"{timeout_s:g} s; said {self.lines}") from None

    def stop(self) -> None:
        """Close stdin; kill the child if it is still running after STOP_TIMEOUT_S."""
        self.close_stdin()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
