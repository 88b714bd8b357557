"""The parse cache: a message's structure with byte offsets, computed once at delivery.

RFC 5322 header parsing, RFC 2045/2046 MIME structure, and the RFC 3501 §7.4.2
ENVELOPE fields. Every part records where its header starts (`hs`), where its
body starts (`bs`) and where it ends (`end`) in the raw message, so IMAP can
answer BODYSTRUCTURE, BODY[section], HEADER, MIME and TEXT by slicing bytes,
never by parsing the message again.

Strings in the cache are the raw header bytes decoded as Latin-1 ("bytes as
str"): JSON-safe on every backend and byte-exact when encoded back with
Latin-1, which is what IMAP must send. Not implemented: RFC 2231 parameter
continuations are passed through as the sender wrote them.
"""
from __future__ import annotations

import re
from email.utils import getaddresses, parsedate_to_datetime

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MAX_DEPTH = 20  # deeper nesting is treated as an opaque leaf, like Dovecot's limit


def split_header(raw: bytes, start: int = 0, end: int | None = None) -> int:
    """Offset where the body starts (just after the blank line), or `end` when there is none."""
    end = len(raw) if end is None else end
    if raw.startswith(b"\r\n", start) or raw.startswith(b"\n", start):
        # An empty header block: the body starts right after the blank line.
        return start + (2 if raw.startswith(b"\r\n", start) else 1)
    match = _HEADER_END.search(raw, start, end)
    return match.end() if match else end


def parse_headers(block: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) pairs, in order, values as Latin-1 strings."""
    fields: list[tuple[str, str]] = []
    for line in block.decode("latin-1").splitlines():
        if not line:
            continue
        if line[0] in " \t":
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue  # not a header field: ignored, as tolerant parsers do
        fields.append((name.strip().lower(), value.strip()))
    return fields


def first(fields: list[tuple[str, str]], name: str) -> str | None:
    for key, value in fields:
        if key == name:
            return value
    return None


def _split_params(text: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
            current.append(char)
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_structured(value: str | None) -> tuple[str, list[list[str]]]:
    """`type/sub; a=b; c="d"` -> ('type/sub', [['a', 'b'], ['c', 'd']])."""
    if not value:
        return "", []
    head, *rest = _split_params(value)
    params = []
    for item in rest:
        name, sep, val = item.partition("=")
        if sep and name.strip():
            params.append([name.strip().lower(), _unquote(val)])
    return head.strip().lower(), params


def _param(params: list[list[str]], name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def _top_level_split(text: str) -> list[tuple[str, str]]:
    """Split an address-list into ("addr", text), ("group", phrase) and ("end", "") pieces.

    RFC 5322 §3.4 groups (`name: a@b, c@d;`) are kept as IMAP wants them (RFC 3501
    §7.4.2: a group start is (NIL NIL name NIL), its end (NIL NIL NIL NIL)); commas,
    colons and semicolons inside quotes, comments or angle brackets do not count.
    """
    pieces: list[tuple[str, str]] = []
    current: list[str] = []
    quoted = escaped = False
    comment = angle = 0
    in_group = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or comment):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"' and not comment:
            quoted = True
        elif char == "(":
            comment += 1
        elif char == ")" and comment:
            comment -= 1
        elif comment:
            pass
        elif char == "<":
            angle += 1
        elif char == ">" and angle:
            angle -= 1
        elif angle:
            pass
        elif char == "," :
            pieces.append(("addr", "".join(current)))
            current = []
            continue
        elif char == ":" and not in_group:
            pieces.append(("group", "".join(current).strip()))
            current = []
            in_group = True
            continue
        elif char == ";" and in_group:
            pieces.append(("addr", "".join(current)))
            pieces.append(("end", ""))
            current = []
            in_group = False
            continue
        current.append(char)
    pieces.append(("addr", "".join(current)))
    if in_group:
        pieces.append(("end", ""))
    return pieces


_ROUTE = re.compile(r"<\s*((?:@[^:<>,]+,?)+):")


def _one_address(text: str) -> list[str | None] | None:
    route = None
    match = _ROUTE.search(text)
    if match:
        route = match.group(1).rstrip(",")
        text = text[:match.start()] + "<" + text[match.end():]
    parsed = getaddresses([text])
    if not parsed:
        return None
    name, address = parsed[0]
    if not address:
        return None  # a bare comment or phrase is not an address
    mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
    return [name.strip() or None, route, mailbox or None, host or None]


# The usual field, one `local@domain` or `Display Name <local@domain>` of plain atoms, needs neither
# the character-by-character group split nor email.utils (a tenth of the SMTP loop's CPU per message).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*(?:(?:((?:{_ATEXT} )*{_ATEXT}) ?)?(<))?({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
    rf"(?(2)>)[ \t]*\Z")


def _addresses(value: str | None) -> list[list[str | None]] | None:
    if not value:
        return None
    simple = _SIMPLE_ADDRESS.match(value)
    if simple is not None:
        return [[simple.group(1), None, simple.group(3), simple.group(4)]]
    result: list[list[str | None]] = []
    for kind, text in _top_level_split(value):
        if kind == "group":
            result.append([None, None, text, None])
        elif kind == "end":
            result.append([None, None, None, None])
        elif text.strip():
            address = _one_address(text)
            if address is not None:
                result.append(address)
    return result or None


def envelope(fields: list[tuple[str, str]]) -> dict:
    """RFC 3501 §7.4.2 ENVELOPE; sender and reply-to default to from."""
    sender_from = _addresses(first(fields, "from"))
    return {
        "date": first(fields, "date"),
        "subject": first(fields, "subject"),
        "from": sender_from,
        "sender": _addresses(first(fields, "sender")) or sender_from,
        "reply_to": _addresses(first(fields, "reply-to")) or sender_from,
        "to": _addresses(first(fields, "to")),
        "cc": _addresses(first(fields, "cc")),
        "bcc": _addresses(first(fields, "bcc")),
        "in_reply_to": first(fields, "in-reply-to"),
        "message_id": first(fields, "message-id"),
    }


def _count_lines(raw: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    lines = raw.count(b"\n", start, end)
    if raw[end - 1:end] != b"\n":
        lines += 1
    return lines


def _boundaries(raw: bytes, boundary: str, start: int, end: int):
    pattern = re.compile(
        rb"^--" + re.escape(boundary.encode("latin-1")) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    return pattern.finditer(raw, start, end)


def _line_break_before(raw: bytes, pos: int, floor: int) -> int:
    """The offset of the line break that precedes a delimiter line (it belongs to the delimiter)."""
    if pos - 2 >= floor and raw[pos - 2:pos] == b"\r\n":
        return pos - 2
    if pos - 1 >= floor and raw[pos - 1:pos] == b"\n":
        return pos - 1
    return pos


def parse_part(raw: bytes, hs: int, end: int, default_type: str = "text/plain", depth: int = 0,
               header_fields: list[tuple[str, str]] | None = None) -> dict:
    bs = split_header(raw, hs, end)
    fields = parse_headers(raw[hs:bs])
    if header_fields is not None:  # the caller wants them too: parsed once
        header_fields.extend(fields)
    ctype, params = parse_structured(first(fields, "content-type"))
    if "/" not in ctype:
        ctype, params = default_type, ([["charset", "us-ascii"]] if default_type == "text/plain" else [])
    maintype, _, subtype = ctype.partition("/")
    disposition = first(fields, "content-disposition")
    disp = None
    if disposition:
        dtype, dparams = parse_structured(disposition)
        disp = [dtype, dparams]
    lang = first(fields, "content-language")
    node: dict = {
        "hs": hs, "bs": bs, "end": end,
        "type": maintype, "subtype": subtype, "params": params,
        "id": first(fields, "content-id"),
        "desc": first(fields, "content-description"),
        "enc": (first(fields, "content-transfer-encoding") or "7bit").lower(),
        "md5": first(fields, "content-md5"),
        "disp": disp,
        "lang": [item.strip() for item in lang.split(",")] if lang else None,
        "loc": first(fields, "content-location"),
        "lines": _count_lines(raw, bs, end),
    }
    boundary = _param(params, "boundary")
    if maintype == "multipart" and boundary and depth < _MAX_DEPTH:
        child_default = "message/rfc822" if subtype == "digest" else "text/plain"
        parts = []
        part_start = None
        for match in _boundaries(raw, boundary, bs, end):
            if part_start is not None:
                parts.append(parse_part(raw, part_start, _line_break_before(raw, match.start(), part_start),
                                        child_default, depth + 1))
            if match.group(1):  # close-delimiter
                part_start = None
                break
            part_start = match.end()
            # Skip the line break that ends the delimiter line.
            if raw.startswith(b"\r\n", part_start):
                part_start += 2
            elif raw.startswith(b"\n", part_start):
                part_start += 1
        if part_start is not None:  # no close-delimiter: the last part runs to the end
            parts.append(parse_part(raw, part_start, end, child_default, depth + 1))
        node["parts"] = parts
    elif maintype == "message" and subtype in ("rfc822", "global") and depth < _MAX_DEPTH:
        inner = parse_part(raw, bs, end, "text/plain", depth + 1)
        inner_fields = parse_headers(raw[bs:inner["bs"]])
        node["msg"] = {"env": envelope(inner_fields), "body": inner}
    return node


def parse_message(raw: bytes) -> tuple[int, dict]:
    """(header size, parse cache) for one message."""
    fields: list[tuple[str, str]] = []
    root = parse_part(raw, 0, len(raw), header_fields=fields)
    sent = None
    date = first(fields, "date")
    if date:
        try:
            sent = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            sent = None
    # v2: ENVELOPE addresses keep RFC 5322 groups and source routes (readers of v1 still work).
    cache = {"v": 2, "env": envelope(fields), "body": root, "sent": sent}
    return root["bs"], cache
