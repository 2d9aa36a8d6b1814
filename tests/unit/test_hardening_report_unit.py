"""Issue 17 #12 and #15: the report and the JUnit XML survive hostile or broken input."""

from __future__ import annotations

# --- issue 17 #15: JUnit XML always parses ----------------------------------------------


def test_junit_xml_parses_with_control_characters_in_findings_and_veto() -> None:
    import xml.etree.ElementTree as ET

    from harness.run.matrix import Row, RowStatus, junit_xml
    nasty = "holder pid 7 (evil\x1b[31m\x00\x07\x0b\x0c\ud800\ufffe cmd)"
    rows = [Row(scenario="standby/clients-first/naive/mix\x01", transition="standby\x02",
                ordering="clients-first", policy="naive\x1f", mix="mixed", verdict="forced\x7f",
                veto=nasty, findings=[f"held the device: {nasty}", "second\x08"],
                status=RowStatus.BAD)]
    suite = ET.fromstring(junit_xml(rows, {}))
    failure = suite.find("testcase/failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert "held the device: holder pid 7 (evil" in message
    assert "\\x1b" in message and "\\x00" in message  # shown, not dropped silently
    assert suite.find("testcase").get("name") == "naive\\x1f[mixed]"  # type: ignore[union-attr]
