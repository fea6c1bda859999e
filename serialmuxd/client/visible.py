"""Guest output for reading (``serialmux log`` without ``--raw``): text kept, control characters made
visible in caret notation (``^[`` for ESC, ``^G``, ``^?`` for DEL), C1 controls and bytes that are not
UTF-8 as ``\\x9b``/``\\xff``; newlines and tabs kept, ``\\r\\n`` shown as a newline.  Incremental: a UTF-8
sequence or a ``\\r`` split across reads gives the same text as one read.  Pure: no I/O."""

from __future__ import annotations

import codecs


class Visualiser:
    __slots__ = ("_cr", "_decoder")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        self._cr = False  # a \r was the last character: a newline after it swallows it

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self._decoder.decode(data, final)
        out: list[str] = []
        for ch in text:
            if self._cr:
                self._cr = False
                if ch != "\n":
                    out.append("^M")
            code = ord(ch)
            if ch == "\r":
                self._cr = True
            elif ch in "\n\t":
                out.append(ch)
            elif code < 0x20 or code == 0x7F:
                out.append("^" + chr(code ^ 0x40))
            elif 0x80 <= code < 0xA0:
                out.append(f"\\x{code:02x}")
            else:
                out.append(ch)
        if final and self._cr:
            self._cr = False
            out.append("^M")
        return "".join(out)


def visible(data: bytes) -> str:
    """The whole of ``data`` at once."""
    return Visualiser().feed(data, final=True)
