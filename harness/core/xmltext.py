"""Text for XML: only the characters XML 1.0 allows (others would make the file
ill-formed). Control characters from holder command lines or veto text are shown as
escapes (\\x1b), so the report still says what was there."""

from __future__ import annotations

import re

# XML 1.0 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def xml_safe(text: object) -> str:
    """`text` as a string XML can hold: every character XML 1.0 forbids (C0 controls but
    tab/newline/CR, lone surrogates, U+FFFE/U+FFFF) replaced by its escape."""
    return _NOT_XML.sub(_escape, str(text))
