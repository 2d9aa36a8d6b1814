"""The paging worker as a real process (no swap here: the ledger's detectors and the
worker's protocol; under memory pressure on the fabric it runs in the guest)."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from harness.core.proc import python_child
from harness.workload.page_ledger import PageFate, PageLedger, ProcessFate, parse_event

RUN_TIMEOUT_S = 60.0


def run_worker(pages: int, *extra: str) -> tuple[list[dict], int]:
    proc = subprocess.Popen(python_child("clients.kernel.paging_worker", str(pages), "7",
                                         *extra),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["pid"] == proc.pid
        proc.stdin.write("go\n")
        proc.stdin.flush()
        lines = [ready]
        while True:  # until it has touched pages for a while: its own progress report
            rec = json.loads(proc.stdout.readline())
            lines.append(rec)
            if rec["event"] == "progress" and rec["touches"] > 1000:
                break
        proc.stdin.write("stop\n")
        proc.stdin.close()
        # the rest through the same buffered reader as the lines above: communicate()
        # reads the pipe itself and loses what readline() had read ahead (CI 18, beside a
        # CPU hog: the first line it gave began in the middle of a record); the watchdog
        # bounds the read (a worker that does not stop is killed, and the read ends)
        watchdog = threading.Timer(RUN_TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            out = proc.stdout.read()
        finally:
            watchdog.cancel()
        proc.wait(RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(RUN_TIMEOUT_S)
    lines += [json.loads(x) for x in out.splitlines()]
    return lines, proc.returncode


def ledger_of(lines: list[dict], pages: int) -> PageLedger:
    events = [parse_event(r) for r in lines if r["event"] in ("touch", "sweep")]
    return PageLedger.of(pages, events, None, ProcessFate.ALIVE)


def test_an_undisturbed_run_verifies_every_page() -> None:
    lines, rc = run_worker(64)
    assert rc == 0
    led = ledger_of(lines, 64)
    assert led.swept and led.fates[PageFate.VERIFIED_OK] == 64, led
    sweep = next(r for r in lines if r["event"] == "sweep")
    assert sweep["touches"] > 1000 and sweep["bad"] == {}


@pytest.mark.parametrize(("how", "fate"), [("zero", PageFate.LOST),
                                           ("damage", PageFate.CORRUPTED)])
def test_a_planted_page_is_found(how: str, fate: PageFate) -> None:
    """The ledger's negative control: a page left as a failed page-in would leave it."""
    lines, rc = run_worker(64, "--plant", f"{how}:5")
    assert rc == 0
    led = ledger_of(lines, 64)
    assert led.fates[fate] == 1 and led.fates[PageFate.VERIFIED_OK] == 63, led
    failed = {r["page"] for r in lines if r["event"] == "touch" and r["check"] != "ok"}
    assert failed <= {5}, failed  # only the planted page failed a check


def test_a_bad_plant_is_refused_before_any_work() -> None:
    lines_err = subprocess.run(python_child("clients.kernel.paging_worker", "4", "1",
                                            "--plant", "zero:9"),
                               input="go\n", capture_output=True, text=True,
                               timeout=RUN_TIMEOUT_S)
    assert lines_err.returncode != 0 and "0 <= P < 4" in lines_err.stderr
