"""One classifier from findings to a row's status (harness/workload/findings.py), used by
all three lanes: each severity makes its own status and no lesser one hides it."""

from __future__ import annotations

from harness.workload.findings import Finding, RowStatus, Severity, by_severity, texts

B, M, X, N = (Finding(Severity.BROKEN, "b"), Finding(Severity.MISSED, "m"),
              Finding(Severity.BAD, "x"), Finding(Severity.NOTE, "n"))


def test_each_severity_makes_its_status_and_the_worst_decides() -> None:
    assert RowStatus.of([]) is RowStatus.CLEAN
    assert RowStatus.of([N]) is RowStatus.CLEAN  # a note judges nothing
    assert RowStatus.of([X, N]) is RowStatus.BAD
    assert RowStatus.of([X, M]) is RowStatus.MISSED
    assert RowStatus.of([X, M, B, N]) is RowStatus.BROKEN
    assert RowStatus.of([N, B]) is RowStatus.BROKEN


def test_the_status_comes_from_severities_not_words() -> None:
    """A finding whose words name another status is judged by its severity alone."""
    assert RowStatus.of([Finding(Severity.NOTE, "broken: transition failed")]) \
        is RowStatus.CLEAN
    assert RowStatus.of([Finding(Severity.BAD, "clean")]) is RowStatus.BAD


def test_rows_list_the_worst_first_in_found_order() -> None:
    x2 = Finding(Severity.BAD, "x2")
    assert texts(by_severity([X, N, B, x2, M])) == ["b", "m", "x", "x2", "n"]
