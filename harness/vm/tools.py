"""The host tools a guest boot needs: virtme-ng's vng, QEMU, a static busybox."""

from __future__ import annotations

import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import NoRxe

QEMU_BINARY = "qemu-system-x86_64"  # vng's own choice on an x86_64 host
BUSYBOX_NAMES = ("busybox-static", "busybox.static", "busybox")  # vng's search order

VM_TOOLS_FIX = (
    "apt-get install virtme-ng deps: qemu-system-x86 busybox-static; "
    "pip install virtme-ng (into this project's venv)"
)
_BIN_DIRS = ("bin", "sbin")


@dataclass(frozen=True)
class VmTools:
    vng: Path
    qemu: Path
    busybox: Path

    @property
    def bin_dir(self) -> Path:
        """vng's directory (the project venv's bin): goes first on PATH, host and guest."""
        return self.vng.parent


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (static or static-pie).

    This is what vng tests with `file -L` ("statically linked" / "static-pie linked").
    """
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
                return False
            end = "<" if ident[5] == 1 else ">"
            if ident[4] == 2:  # ELF64
                (phoff,) = struct.unpack_from(end + "Q", ident, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
            else:  # ELF32
                (phoff,) = struct.unpack_from(end + "I", ident, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 42)
            if phnum == 0 or phentsize < 4:
                return False
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return False
    pt_interp = 3
    for i in range(min(phnum, len(table) // phentsize)):
        (p_type,) = struct.unpack_from(end + "I", table, i * phentsize)
        if p_type == pt_interp:
            return False
    return True


def _which_exe(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def find_vm_tools() -> VmTools:
    """vng (next to this Python, else on PATH), qemu and a static busybox, or NoRxe."""
    vng = _which_exe(Path(sys.executable).parent / "vng")
    if vng is None:
        found = shutil.which("vng")
        vng = Path(found) if found else None
    if vng is None:
        raise NoRxe(
            f"virtme-ng's `vng` is neither next to {sys.executable} nor on PATH",
            VM_TOOLS_FIX,
        )
    if _which_exe(vng.parent / "virtme-run") is None and shutil.which("virtme-run") is None:
        raise NoRxe(
            f"`virtme-run` (which {vng} runs) is neither in {vng.parent} nor on PATH",
            VM_TOOLS_FIX,
        )
    qemu = shutil.which(QEMU_BINARY)
    if qemu is None:
        raise NoRxe(f"{QEMU_BINARY} is not on PATH", VM_TOOLS_FIX)
    busybox: Path | None = None
    for name in BUSYBOX_NAMES:  # PATH first, then the fixed dirs, as vng does
        hit = shutil.which(name)
        candidates = [Path(hit)] if hit else []
        candidates += [Path(p, d, name) for p in ("/usr/local", "/usr", "/") for d in _BIN_DIRS]
        busybox = next((c for c in candidates if c.is_file()), None)
        if busybox is not None:
            break
    if busybox is None:
        raise NoRxe("no busybox found (vng builds its initramfs with it)", VM_TOOLS_FIX)
    if not is_static_elf(busybox):
        raise NoRxe(
            f"{busybox} is not statically linked; vng fails with "
            "'a statically linked busybox could not be found'",
            VM_TOOLS_FIX,
        )
    return VmTools(vng=vng, qemu=Path(qemu), busybox=busybox)
