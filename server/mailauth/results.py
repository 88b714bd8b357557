"""The Authentication-Results header (RFC 8601) and removal of forged ones.

RFC 8601 §5: a border MTA removes (or renames) Authentication-Results fields
that claim its own authserv-id before adding its own, so a sender cannot
pre-forge a "pass". Fields with other authserv-ids stay.
"""
from __future__ import annotations

import re

_FIELD = re.compile(rb"(?im)^authentication-results:[ \t]*(?:\r?\n[ \t]+)*([^;\s]+)")


def _value(text: str) -> str:
    """A property value, quoted when it is not a plain token (RFC 8601 §2.2)."""
    if re.fullmatch(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build(authserv_id: str, results: list[tuple[str, str, str, list[tuple[str, str]]]]) -> bytes:
    """results: (method, result, comment, [(ptype.property, value)]); b'' unless something was checked."""
    parts = []
    for method, result, comment, props in results:
        text = f"{method}={result}"
        if comment:
            text += " (" + comment.replace("(", "[").replace(")", "]") + ")"
        for key, value in props:
            if value:
                text += f" {key}={_value(value)}"
        parts.append(text)
    if not parts:
        parts = ["none"]  # RFC 8601 §2.2: no method applied
    line = f"Authentication-Results: {authserv_id};"
    for index, part in enumerate(parts):
        line += "\r\n\t" + part + (";" if index < len(parts) - 1 else "")
    return line.encode("utf-8", "replace") + b"\r\n"


def strip_forged(raw: bytes, authserv_id: str) -> tuple[bytes, int]:
    """Remove header fields `Authentication-Results: <our id>; ...`; returns (message, how many)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head, body = (raw, b"") if end < 0 else (raw[:end + 2], raw[end + 2:])
    ours = authserv_id.lower().encode()
    lines = head.splitlines(keepends=True)
    kept, removed, skipping = [], 0, False
    for index, line in enumerate(lines):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = False
        if line.lower().startswith(b"authentication-results:"):
            # the authserv-id may sit on a continuation line
            field = line
            for follow in lines[index + 1:]:
                if follow[:1] not in (b" ", b"\t"):
                    break
                field += follow
            match = _FIELD.match(field)
            if match and match.group(1).lower() == ours:
                skipping = True
                removed += 1
                continue
        kept.append(line)
    return b"".join(kept) + body, removed
