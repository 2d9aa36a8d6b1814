"""harness/system/rxe_module.py: which rdma_rxe is loaded and what to do about it (pure
logic, sysfs read from a temporary folder), and the patch applier's anchors."""

from __future__ import annotations

import importlib.util
import os
import types
from pathlib import Path

import pytest

from harness.core.errors import RxePowerError, SettingError
from harness.core.printer import NULL
from harness.core.settings import resolve
from harness.system import rxe_module as rm
from harness.system.rxe_module import Loaded, ModuleFacts, RemovalMode, Step

OURS_SRC = "0D6EECD8607642935EBDB95"
OURS = ModuleFacts(True, "rxe-power-disassociate-pm", OURS_SRC, "OE")
STOCK = ModuleFacts(True, None, None, "")
NONE = ModuleFacts(False, None, None, "")
REPO = Path(__file__).parents[3]


@pytest.mark.parametrize(("facts", "ours_src", "want"), [
    (NONE, OURS_SRC, Loaded.NONE),
    (STOCK, OURS_SRC, Loaded.STOCK),
    (STOCK, None, Loaded.STOCK),
    (OURS, OURS_SRC, Loaded.OURS),
    (OURS, None, Loaded.OTHER),  # our version string, but no cached build to match
    (OURS, "AAAA", Loaded.OTHER),  # an older build of ours: reload
    # `full` (no sleep callbacks) is not what --removal disassociate loads any more
    (ModuleFacts(True, "rxe-power-disassociate-full", OURS_SRC, "OE"), OURS_SRC,
     Loaded.OTHER),
    (ModuleFacts(True, "rxe-power-disassociate-empty-callback", OURS_SRC, "OE"), OURS_SRC,
     Loaded.OTHER),
    (ModuleFacts(True, None, None, "OE"), OURS_SRC, Loaded.OTHER),  # someone else's build
    (ModuleFacts(True, None, None, "E"), OURS_SRC, Loaded.STOCK),  # in tree, unsigned
])
def test_classify(facts: ModuleFacts, ours_src: str | None, want: Loaded) -> None:
    assert rm.classify(facts, ours_src) is want


@pytest.mark.parametrize(("want", "loaded", "steps"), [
    (RemovalMode.DISASSOCIATE, Loaded.OURS, []),
    (RemovalMode.DISASSOCIATE, Loaded.NONE, [Step.LOAD_OURS]),
    (RemovalMode.DISASSOCIATE, Loaded.STOCK, [Step.UNLOAD, Step.LOAD_OURS]),
    (RemovalMode.DISASSOCIATE, Loaded.OTHER, [Step.UNLOAD, Step.LOAD_OURS]),
    (RemovalMode.BLOCK, Loaded.STOCK, []),
    (RemovalMode.BLOCK, Loaded.NONE, [Step.LOAD_STOCK]),
    (RemovalMode.BLOCK, Loaded.OURS, [Step.UNLOAD, Step.LOAD_STOCK]),
    (RemovalMode.BLOCK, Loaded.OTHER, [Step.UNLOAD, Step.LOAD_STOCK]),
])
def test_plan(want: RemovalMode, loaded: Loaded, steps: list[Step]) -> None:
    assert rm.plan(want, loaded) == steps


def test_removal_of_and_taint() -> None:
    assert rm.removal_of(Loaded.OURS) is RemovalMode.DISASSOCIATE
    assert rm.removal_of(Loaded.STOCK) is RemovalMode.BLOCK
    assert rm.removal_of(Loaded.OTHER) is None and rm.removal_of(Loaded.NONE) is None
    assert rm.describe_taint("OE") == "taint OE (out-of-tree module, unsigned module)"
    assert rm.describe_taint("") == "no taint"


def test_module_facts_from_sysfs(tmp_path: Path) -> None:
    assert rm.module_facts(tmp_path / "absent") == NONE
    mod = tmp_path / "rdma_rxe"
    mod.mkdir()
    (mod / "taint").write_text("OE\n")
    (mod / "version").write_text("rxe-power-disassociate-pm\n")
    (mod / "srcversion").write_text(OURS_SRC + "\n")
    assert rm.module_facts(mod) == OURS
    stock = tmp_path / "stock"
    stock.mkdir()
    (stock / "taint").write_text("\n")
    assert rm.module_facts(stock) == STOCK


def test_software_devices_are_the_parentless_ones(tmp_path: Path) -> None:
    (tmp_path / "rxe0").mkdir()
    (tmp_path / "mlx5_0").mkdir()
    (tmp_path / "mlx5_0" / "device").mkdir()
    assert rm.software_rdma_devices(tmp_path) == ["rxe0"]
    assert rm.software_rdma_devices(tmp_path / "absent") == []


def test_our_build_absent_and_unsafe(tmp_path: Path) -> None:
    assert rm.our_build("6.1.0-1-amd64", tmp_path) is None
    ko = tmp_path / "6.1.0-1-amd64" / "pm" / "rdma_rxe.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(b"")
    if os.geteuid() != 0:  # not root-owned: refused, with the fix
        with pytest.raises(RxePowerError, match="not root-owned"):
            rm.our_build("6.1.0-1-amd64", tmp_path)
    else:
        os.chmod(ko, 0o666)  # world-writable: refused
        with pytest.raises(RxePowerError, match="group/world-writable"):
            rm.our_build("6.1.0-1-amd64", tmp_path)


def test_missing_build_names_the_script() -> None:
    err = rm.missing_build_error("6.1.0-56-amd64")
    assert "ci/build-rxe-disassociate.sh 6.1.0-56-amd64" in err.fix


def test_removal_setting() -> None:
    assert resolve("removal", environ={}).value is RemovalMode.BLOCK
    assert resolve("removal", "Disassociate", environ={}).value is RemovalMode.DISASSOCIATE
    assert resolve("removal", environ={"RXE_POWER_REMOVAL": "block"}).value is RemovalMode.BLOCK
    with pytest.raises(SettingError, match="RXE_POWER_REMOVAL"):
        resolve("removal", environ={"RXE_POWER_REMOVAL": "later"})


def _patcher() -> object:
    spec = importlib.util.spec_from_file_location("rxe_patch", REPO / "ci" /
                                                  "rxe_disassociate_patch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The kernel source the module is built from (ci/build-rxe-disassociate.sh): Debian's
# linux-source-6.1, for the guest's 6.1 kernel. Extracting rxe takes ~10 s of xz.
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
RXE_IN_TARBALL = "linux-source-6.1/drivers/infiniband/sw/rxe"
EXTRACT_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def real_rxe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """drivers/infiniband/sw/rxe as the kernel's own source tarball has it (read-only:
    each test patches a copy)."""
    import subprocess

    if not SOURCE_TARBALL.is_file():
        msg = (f"{SOURCE_TARBALL} is not installed: the patch is checked against the real "
               "source; fix: apt-get install linux-source-6.1 (ci/bootstrap.sh does)")
        if os.environ.get("RXE_POWER_REQUIRE_RXE") == "1":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("linux-source")
    subprocess.run(["tar", "-xJf", str(SOURCE_TARBALL), "-C", str(out), RXE_IN_TARBALL],
                   check=True, timeout=EXTRACT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return out / RXE_IN_TARBALL


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst / "rxe"))


def _block(text: str, head: str, end: str = "\n}") -> str:
    """The text from `head` (which occurs once) to the first `end` after it."""
    assert text.count(head) == 1, head
    start = text.index(head)
    return text[start:text.index(end, start) + len(end)]


@pytest.mark.parametrize("variant", ["full", "pm", "empty-callback"])
def test_patch_applies_to_the_real_source(real_rxe: Path, tmp_path: Path,
                                          variant: str) -> None:
    """Each edit's anchor occurs exactly once in Linux 6.1's own rxe (Debian's
    linux-source-6.1), and the patched files say what the build needs, where it must
    be: the callback in rxe_dev_ops, a module reference per live VMA (taken in
    rxe_mmap() and rxe_vma_open(), dropped in rxe_vma_close()), the device's lock only
    for an entry still pending, and our MODULE_VERSION. Nothing else changes."""
    import difflib

    patch = _patcher()
    rxe = _copy(real_rxe, tmp_path)
    done = patch.apply(rxe, variant)
    assert len(done) == {"full": 7, "pm": 11, "empty-callback": 3}[variant], done
    full = variant in ("full", "pm")
    verbs = (rxe / "rxe_verbs.c").read_text()
    ops = _block(verbs, "static const struct ib_device_ops rxe_dev_ops = {", "\n};")
    assert "\t.disassociate_ucontext = rxe_disassociate_ucontext,\n" in ops
    assert verbs.index("static void rxe_disassociate_ucontext(") < verbs.index(ops)
    mmap = (rxe / "rxe_mmap.c").read_text()
    vma_open = _block(mmap, "static void rxe_vma_open(")
    vma_close = _block(mmap, "static void rxe_vma_close(")
    mapper = _block(mmap, "int rxe_mmap(struct ib_ucontext *context")
    release = _block(mmap, "void rxe_mmap_release(struct kref *ref)")
    assert ("__module_get(THIS_MODULE)" in vma_open) == full
    assert ("module_put(THIS_MODULE)" in vma_close) == full
    assert ("__module_get(THIS_MODULE)" in mapper) == full
    # the device is looked at only inside the branch for an entry still pending
    assert ("if (!list_empty(&ip->pending_mmaps)) {\n\t\tstruct rxe_dev *rxe" in release) \
        == full
    rxe_c = (rxe / "rxe.c").read_text()
    assert f'MODULE_VERSION("rxe-power-disassociate-{variant}");' in rxe_c
    # pm: the sleep callbacks, registered before rdma_link_register and gone at exit,
    # doing nothing while pm_unregister is empty
    assert ("SET_SYSTEM_SLEEP_PM_OPS(rxe_pm_suspend, rxe_pm_resume)" in rxe_c) == \
        (variant == "pm")
    if variant == "pm":
        init = _block(rxe_c, "static int __init rxe_module_init(void)")
        assert init.index("rxe_pm_init()") < init.index("rdma_link_register(")
        assert "rxe_pm_exit();" in _block(rxe_c, "static void __exit rxe_module_exit(void)")
        suspend = _block(rxe_c, "static int rxe_pm_suspend(struct device *dev)")
        assert suspend.index("if (!names[0])\n\t\treturn 0;") < suspend.index("rtnl_lock")
    # only the three files changed, and only by added lines (plus the one rewritten
    # block of rxe_mmap_release in the full variant)
    changed = []
    for f in sorted(real_rxe.iterdir()):
        before, after = f.read_text().splitlines(), (rxe / f.name).read_text().splitlines()
        if before != after:
            changed.append(f.name)
            removed = [d for d in difflib.unified_diff(before, after, lineterm="", n=0)
                       if d.startswith("-") and not d.startswith("---")]
            assert not removed or (full and f.name == "rxe_mmap.c"), (f.name, removed)
    assert changed == ["rxe.c", "rxe_mmap.c", "rxe_verbs.c"] if full else \
        ["rxe.c", "rxe_verbs.c"], changed
    with pytest.raises(SystemExit, match="already patched"):
        patch.main([str(rxe)])


def test_patch_refuses_a_source_that_differs(real_rxe: Path, tmp_path: Path) -> None:
    """A kernel whose rxe differs at an anchor (here: the real 6.1 file with one line of
    rxe_vma_close changed) is refused, naming the file and the anchor, instead of building
    something we did not mean (the build script patches a fresh extract each time)."""
    patch = _patcher()
    rxe = _copy(real_rxe, tmp_path)
    mmap = rxe / "rxe_mmap.c"
    text = mmap.read_text()
    assert text.count("\tkref_put(&ip->ref, rxe_mmap_release);\n}\n") == 1
    mmap.write_text(text.replace("\tkref_put(&ip->ref, rxe_mmap_release);\n}\n",
                                 "\tkref_put(&ip->ref, rxe_mmap_release_v2);\n}\n"))
    with pytest.raises(SystemExit, match=r"rxe_mmap.c: the anchor occurs 0 times"):
        patch.apply(rxe, "full")


def test_cli_default_removal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default: disassociate where our module is built for the kernel, else block
    (saying how to build it); natively with rxe devices present, the loaded module's mode."""
    from harness.cli import removal
    from harness.core.settings import Mode

    monkeypatch.delenv("RXE_POWER_REMOVAL", raising=False)
    monkeypatch.setattr(rm, "software_rdma_devices", lambda: [])
    monkeypatch.setattr(rm, "default_removal", lambda rel: RemovalMode.DISASSOCIATE)
    assert removal.choose_removal(None, Mode.NATIVE, NULL)[0] is RemovalMode.DISASSOCIATE
    monkeypatch.setattr(rm, "default_removal", lambda rel: RemovalMode.BLOCK)
    want, why = removal.choose_removal(None, Mode.NATIVE, NULL)
    assert want is RemovalMode.BLOCK and "ci/build-rxe-disassociate.sh" in why
    monkeypatch.setattr(rm, "software_rdma_devices", lambda: ["rxe0"])
    monkeypatch.setattr(rm, "current_removal", lambda: RemovalMode.DISASSOCIATE)
    assert removal.choose_removal(None, Mode.NATIVE, NULL)[0] is RemovalMode.DISASSOCIATE
    assert removal.choose_removal("block", Mode.NATIVE, NULL)[0] is RemovalMode.BLOCK


class _Item:
    def __init__(self, name: str, removal: str | None) -> None:
        self.name, self.removal = name, removal

    def get_closest_marker(self, name: str) -> object:
        if name != "removal" or self.removal is None:
            return None
        return type("Mark", (), {"args": (self.removal,)})()


def test_tests_needing_the_other_module_run_last_together(monkeypatch) -> None:
    """The suite switches rdma_rxe once: the tests marked removal(<the other mode>) are
    moved after the rest, keeping the order within each group (a switch rebuilds the
    topology; before, each such module switched there and back)."""
    from harness import plugin
    from harness.core.settings import RemovalMode

    monkeypatch.setattr(plugin, "removal_setting", lambda config: RemovalMode.BLOCK)
    items = [_Item("a", None), _Item("d1", "disassociate"), _Item("b", "block"),
             _Item("d2", "disassociate"), _Item("c", None)]
    config = types.SimpleNamespace(stash=pytest.Stash())  # no --shard
    plugin.pytest_collection_modifyitems(config, items)  # type: ignore[arg-type]
    assert [i.name for i in items] == ["a", "b", "c", "d1", "d2"]
