"""FETCH items (RFC 3501 §6.4.5, §7.4.2) rendered from the parse cache by slicing raw bytes.

ENVELOPE and BODYSTRUCTURE come from the cache built at delivery
(storage/mime.py); BODY[section]<partial> is a byte range of the raw message
whose offsets the cache recorded, so no message is parsed again here.
MODSEQ (RFC 7162) is rendered when asked. Not implemented: BINARY (RFC 3516).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .parser import Atom, ParseError, String, format_date_time, quote

_BODY_ITEM = re.compile(rb"^(BODY|BODY\.PEEK)\[(.*)\](?:<(\d+)\.(\d+)>)?$", re.IGNORECASE | re.DOTALL)
_SIMPLE = {b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY", b"BODYSTRUCTURE", b"UID",
           b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT", b"MODSEQ"}
_MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}


@dataclass(frozen=True)
class FetchItem:
    name: bytes  # FLAGS, ..., or BODY for a section fetch
    section: bytes | None = None  # the text inside [], as the client wrote it
    parts: tuple[int, ...] = ()
    spec: bytes = b""  # b"", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[bytes, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False

    @property
    def needs_raw(self) -> bool:
        return self.section is not None or self.name in (b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT")

    @property
    def needs_cache(self) -> bool:
        return self.name in (b"ENVELOPE", b"BODY", b"BODYSTRUCTURE") and self.section is None or \
            self.section is not None and bool(self.parts)

    @property
    def sets_seen(self) -> bool:
        # §6.4.5: BODY[...] and RFC822/RFC822.TEXT set \Seen; PEEK and RFC822.HEADER do not.
        return (self.section is not None and not self.peek) or self.name in (b"RFC822", b"RFC822.TEXT")


def parse_fetch_items(token) -> list[FetchItem]:  # noqa: ANN001
    if isinstance(token, Atom) and token.upper() in _MACROS:
        return [FetchItem(name) for name in _MACROS[token.upper()]]
    raw_items = token if isinstance(token, list) else [token]
    if not raw_items:
        raise ParseError("empty fetch attribute list")
    items = []
    for raw in raw_items:
        if not isinstance(raw, Atom):
            raise ParseError("bad fetch attribute")
        items.append(parse_fetch_item(bytes(raw)))
    return items


def parse_fetch_item(raw: bytes) -> FetchItem:
    upper = raw.upper()
    if upper in _SIMPLE:
        return FetchItem(upper)
    match = _BODY_ITEM.match(raw)
    if not match:
        if raw.upper().startswith((b"BODY[", b"BODY.PEEK[")) and b"<" in raw:
            raise ParseError("bad partial specification")
        raise ParseError(f"unknown fetch attribute {raw[:40].decode('latin-1')}")
    name, section, start, count = match.groups()
    partial = None
    if start is not None:
        partial = (int(start), int(count))
        if partial[1] == 0:
            raise ParseError("partial length must be nonzero")
    parts, spec, fields = parse_section(section)
    return FetchItem(b"BODY", section, parts, spec, fields, partial, peek=name.upper() == b"BODY.PEEK")


def parse_section(section: bytes) -> tuple[tuple[int, ...], bytes, tuple[bytes, ...]]:
    text, _, rest = section.partition(b" ")
    pieces = text.split(b".") if text else []
    parts: list[int] = []
    while pieces and pieces[0].isdigit():
        value = int(pieces.pop(0))
        if value == 0:
            raise ParseError("section part numbers start at 1")
        parts.append(value)
    spec = b".".join(pieces).upper()
    fields: tuple[bytes, ...] = ()
    if spec in (b"HEADER.FIELDS", b"HEADER.FIELDS.NOT"):
        rest = rest.strip()
        if not (rest.startswith(b"(") and rest.endswith(b")")):
            raise ParseError("header field list expected")
        names = [name.strip(b'"') for name in rest[1:-1].split()]
        if not names:
            raise ParseError("empty header field list")
        fields = tuple(name.lower() for name in names)
    elif rest:
        raise ParseError("bad section")
    if spec not in (b"", b"HEADER", b"HEADER.FIELDS", b"HEADER.FIELDS.NOT", b"TEXT", b"MIME"):
        raise ParseError("bad section text")
    if spec == b"MIME" and not parts:
        raise ParseError("MIME needs a part number")
    return tuple(parts), spec, fields


# ------------------------------------------------------------------ rendering


def _nstr(value: str | None) -> bytes:
    return quote(value.encode("latin-1", "replace") if value is not None else None)


def _addresses(items) -> bytes:  # noqa: ANN001
    if not items:
        return b"NIL"
    return b"(" + b"".join(b"(" + b" ".join(_nstr(part) for part in address) + b")" for address in items) + b")"


def envelope(env: dict) -> bytes:
    return b"(" + b" ".join([
        _nstr(env.get("date")), _nstr(env.get("subject")),
        _addresses(env.get("from")), _addresses(env.get("sender")), _addresses(env.get("reply_to")),
        _addresses(env.get("to")), _addresses(env.get("cc")), _addresses(env.get("bcc")),
        _nstr(env.get("in_reply_to")), _nstr(env.get("message_id")),
    ]) + b")"


def _params(params) -> bytes:  # noqa: ANN001
    if not params:
        return b"NIL"
    return b"(" + b" ".join(_nstr(name) + b" " + _nstr(value) for name, value in params) + b")"


def _disposition(disp) -> bytes:  # noqa: ANN001
    if not disp:
        return b"NIL"
    return b"(" + _nstr(disp[0]) + b" " + _params(disp[1]) + b")"


def _language(lang) -> bytes:  # noqa: ANN001
    if not lang:
        return b"NIL"
    return b"(" + b" ".join(_nstr(item) for item in lang) + b")"


def body_structure(node: dict, extended: bool) -> bytes:
    """RFC 3501 §7.4.2 BODY / BODYSTRUCTURE of one part, recursively."""
    parts = node.get("parts")
    if node["type"] == "multipart" and parts:
        out = b"(" + b"".join(body_structure(part, extended) for part in parts) + b" " + _nstr(node["subtype"])
        if extended:
            out += b" " + b" ".join([_params(node["params"]), _disposition(node.get("disp")),
                                     _language(node.get("lang")), _nstr(node.get("loc"))])
        return out + b")"
    maintype, subtype, params = node["type"], node["subtype"], node["params"]
    if maintype == "multipart":
        # A multipart without a usable boundary is shown as the text it really is.
        maintype, subtype, params = "text", "plain", [["charset", "us-ascii"]]
    fields = [_nstr(maintype), _nstr(subtype), _params(params), _nstr(node.get("id")), _nstr(node.get("desc")),
              _nstr(node.get("enc") or "7bit"), b"%d" % (node["end"] - node["bs"])]
    if maintype == "text":
        fields.append(b"%d" % node["lines"])
    elif maintype == "message" and subtype in ("rfc822", "global") and node.get("msg"):
        fields.append(envelope(node["msg"]["env"]))
        fields.append(body_structure(node["msg"]["body"], extended))
        fields.append(b"%d" % node["lines"])
    if extended:
        fields += [_nstr(node.get("md5")), _disposition(node.get("disp")), _language(node.get("lang")),
                   _nstr(node.get("loc"))]
    return b"(" + b" ".join(fields) + b")"


def _find_part(root: dict, parts: tuple[int, ...]) -> dict | None:
    node = root
    for index, number in enumerate(parts):
        if index > 0 and node.get("msg"):
            node = node["msg"]["body"]
        children = node.get("parts")
        if node["type"] == "multipart" and children:
            if number > len(children):
                return None
            node = children[number - 1]
        elif number == 1:
            continue
        else:
            return None
    return node


def header_fields(block: bytes, names: tuple[bytes, ...], exclude: bool) -> bytes:
    """The fields of a header block named (or not named) in `names`, plus the blank line."""
    wanted = set(names)
    out: list[bytes] = []
    keep = False
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = (name in wanted) != exclude
        if keep:
            out.append(line)
    return b"".join(out) + b"\r\n"


def section_bytes(item: FetchItem, raw: bytes, cache: dict | None, header_size: int) -> bytes:
    """The bytes a BODY[section] names (before any partial)."""
    if not item.parts:
        if item.spec == b"":
            return raw
        if item.spec == b"TEXT":
            return raw[header_size:]
        block = raw[:header_size]
    else:
        node = _find_part(cache["body"], item.parts) if cache else None
        if node is None:
            return b""
        if item.spec == b"":
            return raw[node["bs"]:node["end"]]
        if item.spec == b"MIME":
            return raw[node["hs"]:node["bs"]] if len(item.parts) else b""
        # HEADER/TEXT of a part: only a message/rfc822 part has them (§6.4.5).
        inner = node.get("msg")
        if not inner:
            return b""
        body = inner["body"]
        if item.spec == b"TEXT":
            return raw[body["bs"]:body["end"]]
        block = raw[body["hs"]:body["bs"]]
    if item.spec == b"HEADER":
        return block
    return header_fields(block, item.fields, exclude=item.spec == b"HEADER.FIELDS.NOT")


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def flags_list(names) -> bytes:  # noqa: ANN001
    return b"(" + " ".join(names).encode("utf-8") + b")"


def render(items: list[FetchItem], *, uid: int, flag_names, internaldate, size: int, modseq: int,  # noqa: ANN001
           cache: dict | None, raw: bytes | None, header_size: int) -> list[bytes]:
    """The parenthesized FETCH data items of one message, as chunks."""
    out: list[bytes] = []
    for item in items:
        name = item.name
        if name == b"UID":
            out.append(b"UID %d" % uid)
        elif name == b"FLAGS":
            out.append(b"FLAGS " + flags_list(flag_names))
        elif name == b"INTERNALDATE":
            out.append(b'INTERNALDATE "' + format_date_time(internaldate) + b'"')
        elif name == b"RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % size)
        elif name == b"MODSEQ":
            out.append(b"MODSEQ (%d)" % modseq)
        elif name == b"ENVELOPE":
            out.append(b"ENVELOPE " + envelope(cache["env"]))
        elif name == b"BODYSTRUCTURE":
            out.append(b"BODYSTRUCTURE " + body_structure(cache["body"], True))
        elif name == b"BODY" and item.section is None:
            out.append(b"BODY " + body_structure(cache["body"], False))
        elif name == b"RFC822":
            out.append(b"RFC822 " + literal(raw))
        elif name == b"RFC822.HEADER":
            out.append(b"RFC822.HEADER " + literal(raw[:header_size]))
        elif name == b"RFC822.TEXT":
            out.append(b"RFC822.TEXT " + literal(raw[header_size:]))
        else:
            data = section_bytes(item, raw, cache, header_size)
            label = b"BODY[" + item.section + b"]"
            if item.partial is not None:
                start, count = item.partial
                data = data[start:start + count]
                label += b"<%d>" % start
            out.append(label + b" " + literal(data))
    return out


__all__ = ["FetchItem", "parse_fetch_items", "render", "body_structure", "envelope", "String"]
