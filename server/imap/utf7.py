"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3), both ways.

Twisted's `imap4-utf-7` codec accepts malformed input silently; this one is
strict on decode (a client's bad name gets NO, never a wrong mailbox).
"""
from __future__ import annotations

import base64


class BadMailboxEncoding(ValueError):
    """A mailbox name that is not valid modified UTF-7."""


def encode(name: str) -> bytes:
    """Unicode mailbox name -> modified UTF-7 bytes."""
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(data).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for char in name:
        code = ord(char)
        if 0x20 <= code <= 0x7E:
            flush()
            out.extend(b"&-" if char == "&" else char.encode("ascii"))
        else:
            pending.append(char)
    flush()
    return bytes(out)


def decode(raw: bytes) -> str:
    """Modified UTF-7 bytes -> Unicode; raises BadMailboxEncoding."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x26:  # '&'
            end = raw.find(b"-", i + 1)
            if end < 0:
                raise BadMailboxEncoding("unterminated & sequence")
            chunk = raw[i + 1:end]
            if not chunk:
                out.append("&")
            else:
                # §5.1.3: base64 with ',' for '/', no padding; must decode to UTF-16.
                if not all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+," for c in chunk):
                    raise BadMailboxEncoding("bad character in & sequence")
                padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
                try:
                    text = base64.b64decode(padded, validate=True).decode("utf-16-be")
                except (ValueError, UnicodeDecodeError):
                    raise BadMailboxEncoding("bad base64 in & sequence") from None
                if any(0x20 <= ord(c) <= 0x7E for c in text):
                    raise BadMailboxEncoding("printable ASCII must not be encoded")
                out.append(text)
            i = end + 1
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
            i += 1
        elif byte >= 0x80:
            # Tolerate raw UTF-8 (RFC 6855 clients send it); refuse anything else.
            try:
                rest = raw[i:].split(b"&", 1)[0]
                text = rest.decode("utf-8")
            except UnicodeDecodeError:
                raise BadMailboxEncoding("8-bit characters in mailbox name") from None
            out.append(text)
            i += len(rest)
        else:
            raise BadMailboxEncoding("control character in mailbox name")
    return "".join(out)
