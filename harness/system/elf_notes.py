"""The GNU build-id of a kernel module: of its .ko file (the ELF section
.note.gnu.build-id) and of the loaded module (/sys/module/NAME/notes/.note.gnu.build-id,
the same note as the kernel keeps it). Equal notes: the loaded module is that file.

    build_id_note(Path("rdma_rxe.ko").read_bytes())    # the raw note, or None
    note_build_id(note)                                 # its id as hex
"""

from __future__ import annotations

import struct

SECTION = b".note.gnu.build-id"
ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB = 2, 1
NT_GNU_BUILD_ID = 3
MAX_SECTIONS = 4096


def build_id_note(elf: bytes) -> bytes | None:
    """The raw .note.gnu.build-id section of a 64-bit little-endian ELF file (a .ko), or
    None (not such an ELF, no such section, or a header that points outside the file)."""
    if len(elf) < 64 or elf[:4] != ELF_MAGIC or elf[4] != ELFCLASS64 or elf[5] != ELFDATA2LSB:
        return None
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    if shentsize < 64 or not 0 < shnum <= MAX_SECTIONS or shstrndx >= shnum \
            or shoff + shnum * shentsize > len(elf):
        return None

    def section(i: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    if str_off + str_size > len(elf):
        return None
    names = elf[str_off:str_off + str_size]
    for i in range(shnum):
        name, offset, size = section(i)
        if names[name:name + len(SECTION) + 1] == SECTION + b"\0":
            return elf[offset:offset + size] if offset + size <= len(elf) else None
    return None


def note_build_id(note: bytes) -> str | None:
    """The build-id (hex) in a GNU build-id note (namesz, descsz, type, "GNU\\0", desc)."""
    if len(note) < 12:
        return None
    namesz, descsz, kind = struct.unpack_from("<III", note, 0)
    start = 12 + (namesz + 3) // 4 * 4
    if kind != NT_GNU_BUILD_ID or note[12:12 + namesz] != b"GNU\0" \
            or start + descsz > len(note):
        return None
    return note[start:start + descsz].hex()
