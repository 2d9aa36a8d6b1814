"""The pytest plugin's handling of EOPNOTSUPP (harness/plugin/options.py), run for real on small
test files through pytester: a skip where the device or kernel may lack the feature, a
failure under RXE_POWER_REQUIRE_RXE=1 unless the test says it may meet it."""

from __future__ import annotations

import errno

import pytest

pytest_plugins = ["pytester"]

RAISES = f"""
import pytest
from harness.core.errors import NotSupported

def _call():
    raise NotSupported("ibv_alloc_dm(rxe0)", {errno.EOPNOTSUPP})

def test_plain():
    _call()

@pytest.mark.may_be_unsupported("device memory: no rxe has it")
def test_declared():
    _call()

def test_other_error():
    raise OSError({errno.EIO}, "not an EOPNOTSUPP")
"""


@pytest.mark.parametrize("require", ["0", "1"])
def test_eopnotsupp_is_a_skip_only_where_expected(pytester: pytest.Pytester,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  require: str) -> None:
    monkeypatch.setenv("RXE_POWER_REQUIRE_RXE", require)
    pytester.makepyfile(test_eop=RAISES)
    res = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rsf")
    if require == "0":  # on a machine that may lack the feature: both skip, with the errno
        res.assert_outcomes(skipped=2, failed=1)
        res.stdout.fnmatch_lines(["SKIPPED [[]2[]] *not supported by this device/kernel: "
                                  "ibv_alloc_dm(rxe0): [[]*95[]] Operation not supported"])
    else:  # CI: only the test that says it may meet EOPNOTSUPP skips
        res.assert_outcomes(skipped=1, failed=2)
        res.stdout.fnmatch_lines(["unexpected EOPNOTSUPP under RXE_POWER_REQUIRE_RXE=1: "
                                  "ibv_alloc_dm(rxe0): [[]*95[]] Operation not supported*"])
        failed = {line.split()[1] for line in res.outlines if line.startswith("FAILED")}
        assert failed == {"test_eop.py::test_plain", "test_eop.py::test_other_error"}


NEEDS = """
import pytest

@pytest.mark.kernel_modules("rxe_power_no_such_module")
def test_needs_a_module_no_kernel_has():
    pass

def test_needs_nothing_more():
    pass
"""


@pytest.mark.parametrize("require", ["0", "1"])
def test_the_rxe_group_marks_its_tests_and_checks_their_kernel_modules(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, require: str) -> None:
    """tests/rxe/conftest.py, run for real in a copy: every test of the folder is marked rxe
    (`-m 'not rxe'` leaves none), and a module no kernel has skips its test with modinfo's
    reason, or fails it under RXE_POWER_REQUIRE_RXE=1; a test needing nothing more runs."""
    from pathlib import Path
    conftest = Path(__file__).parents[2] / "rxe" / "conftest.py"
    monkeypatch.setenv("RXE_POWER_REQUIRE_RXE", require)
    group = pytester.mkdir("rxe")
    (group / "conftest.py").write_text(conftest.read_text())
    (group / "test_needs.py").write_text(NEEDS)
    res = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-m", "not rxe", "rxe")
    res.assert_outcomes(deselected=2)
    # the module check alone: an rxe test also needs the topology, which a host lacks, so
    # the copy here does not mark its tests (its HERE names no folder)
    text = conftest.read_text()
    assert "HERE = Path(__file__).parent\n" in text
    (group / "conftest.py").write_text(text.replace("HERE = Path(__file__).parent\n",
                                                    "HERE = Path('/nonexistent')\n"))
    res = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rsf", "rxe")
    if require == "0":
        res.assert_outcomes(passed=1, skipped=1)
    else:
        res.assert_outcomes(passed=1, errors=1)  # failed in its set-up (a fixture)
    res.stdout.fnmatch_lines(["*needs kernel modules this kernel (*) lacks: "
                              "rxe_power_no_such_module (*not found*"])
