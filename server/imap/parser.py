"""IMAP command argument syntax (RFC 3501 §9): atoms, strings, literals, lists, sequence sets.

The protocol assembles one command from its lines and literals (`Command`);
this module turns it into tokens and offers the readers command handlers
use. Any syntax error raises `ParseError`, which the protocol answers with a
tagged BAD, leaving the session usable. Twisted's own argument parsers are not
used: they mishandle escapes in quoted strings, nested lists and literals in
the middle of a command.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone


class ParseError(Exception):
    """Client syntax error: tagged BAD."""


class Atom(bytes):
    """An atom (also NIL, numbers, flags, fetch items with their [section]<partial>)."""


class String(bytes):
    """A quoted string or a literal."""


@dataclass
class Command:
    """One command as received: text segments, each but the last ending in a literal."""

    texts: list[bytes] = field(default_factory=list)
    literals: list[bytes] = field(default_factory=list)


_ATOM_SPECIALS = set(b'(){ "') | set(range(0, 0x20)) | {0x7F}
_LITERAL_AT_END = re.compile(rb"~?\{(\d+)(\+)?\}$")


class Tokenizer:
    def __init__(self, command: Command) -> None:
        self.texts = command.texts
        self.literals = command.literals
        self.segment = 0
        self.text = self.texts[0] if self.texts else b""
        self.pos = 0

    def _at_literal(self) -> re.Match | None:
        if self.segment < len(self.literals):
            match = _LITERAL_AT_END.search(self.text)
            if match and match.start() == self.pos:
                return match
        return None

    def tokens(self) -> list:
        result = self._sequence(top=True)
        return result

    def _sequence(self, top: bool) -> list:
        items: list = []
        while True:
            if self.pos >= len(self.text):
                if top:
                    return items
                raise ParseError("unbalanced parentheses")
            char = self.text[self.pos]
            if char == 0x20:
                self.pos += 1
                continue
            if char == 0x28:  # (
                self.pos += 1
                items.append(self._sequence(top=False))
            elif char == 0x29:  # )
                if top:
                    raise ParseError("unbalanced parentheses")
                self.pos += 1
                return items
            elif char == 0x22:  # "
                items.append(self._quoted())
            elif char in (0x7B, 0x7E) and self._at_literal():
                items.append(String(self.literals[self.segment]))
                self.segment += 1
                self.text = self.texts[self.segment]
                self.pos = 0
            else:
                items.append(self._atom())

    def _quoted(self) -> String:
        out = bytearray()
        i = self.pos + 1
        text = self.text
        while i < len(text):
            char = text[i]
            if char == 0x5C:  # backslash
                if i + 1 >= len(text) or text[i + 1] not in (0x22, 0x5C):
                    raise ParseError("bad escape in quoted string")
                out.append(text[i + 1])
                i += 2
            elif char == 0x22:
                self.pos = i + 1
                return String(bytes(out))
            elif char in (0x0D, 0x0A):
                raise ParseError("line break in quoted string")
            else:
                out.append(char)
                i += 1
        raise ParseError("unterminated quoted string")

    def _atom(self) -> Atom:
        start = i = self.pos
        text = self.text
        while i < len(text):
            char = text[i]
            if char == 0x5B:  # [ ... ] may hold spaces and parentheses (fetch sections)
                end = text.find(b"]", i)
                if end >= 0:
                    i = end + 1
                    continue
                # A lone "[" is an ordinary ATOM-CHAR (e.g. in a mailbox name).
            if char in _ATOM_SPECIALS:
                break
            i += 1
        if i == start:
            raise ParseError(f"unexpected character {chr(text[i])!r}")
        self.pos = i
        return Atom(text[start:i])


def tokenize(command: Command) -> list:
    return Tokenizer(command).tokens()


class Args:
    """Readers over a command's tokens (after tag and command name)."""

    def __init__(self, tokens: list) -> None:
        self.tokens = tokens
        self.i = 0

    def more(self) -> bool:
        return self.i < len(self.tokens)

    def peek(self):  # noqa: ANN201
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self, what: str = "argument"):  # noqa: ANN201
        if self.i >= len(self.tokens):
            raise ParseError(f"missing {what}")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def end(self) -> None:
        if self.i < len(self.tokens):
            raise ParseError("too many arguments")

    def atom(self, what: str = "atom") -> bytes:
        token = self.next(what)
        if not isinstance(token, Atom):
            raise ParseError(f"expected {what}")
        return bytes(token)

    def astring(self, what: str = "string") -> bytes:
        token = self.next(what)
        if isinstance(token, list):
            raise ParseError(f"expected {what}")
        return bytes(token)

    def string(self, what: str = "string") -> bytes:
        token = self.next(what)
        if not isinstance(token, String):
            raise ParseError(f"expected quoted string or literal for {what}")
        return bytes(token)

    def list(self, what: str = "list") -> list:
        token = self.next(what)
        if not isinstance(token, list):
            raise ParseError(f"expected parenthesized {what}")
        return token

    def number(self, what: str = "number") -> int:
        return parse_number(self.atom(what), what)


def parse_number(raw: bytes, what: str = "number", *, nonzero: bool = False) -> int:
    if not raw.isdigit() or len(raw) > 20:
        raise ParseError(f"bad {what}")
    value = int(raw)
    if nonzero and value == 0:
        raise ParseError(f"bad {what}")
    return value


# ------------------------------------------------------------------ sequence sets

STAR = -1


def parse_sequence_set(raw: bytes) -> list[tuple[int, int]]:
    """RFC 3501 §9 sequence-set -> [(lo, hi)], STAR for `*`; ranges may be written backwards."""
    if raw == b"$":
        raise ParseError("SEARCHRES is not supported")
    ranges = []
    for item in raw.split(b","):
        lo_raw, sep, hi_raw = item.partition(b":")
        lo = _seq_number(lo_raw)
        hi = _seq_number(hi_raw) if sep else lo
        ranges.append((lo, hi))
    return ranges


def _seq_number(raw: bytes) -> int:
    if raw == b"*":
        return STAR
    if not raw.isdigit() or raw.startswith(b"0") or len(raw) > 10:
        raise ParseError("bad sequence set")
    value = int(raw)
    if value > 0xFFFFFFFF:
        raise ParseError("bad sequence set")
    return value


def is_sequence_set(raw: bytes) -> bool:
    try:
        parse_sequence_set(raw)
    except ParseError:
        return False
    return True


def format_uid_set(uids) -> bytes:  # noqa: ANN001
    """Compact `1:3,7` form of ascending unique numbers."""
    parts: list[str] = []
    start = prev = None
    for uid in sorted(set(uids)):
        if start is None:
            start = prev = uid
        elif uid == prev + 1:
            prev = uid
        else:
            parts.append(f"{start}" if start == prev else f"{start}:{prev}")
            start = prev = uid
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}:{prev}")
    return ",".join(parts).encode("ascii")


# ------------------------------------------------------------------ dates

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DATE_TIME = re.compile(rb"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")
_DATE = re.compile(rb"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")


def parse_date_time(raw: bytes) -> datetime:
    """RFC 3501 date-time: `dd-Mon-yyyy hh:mm:ss +zzzz` (day may be space-padded)."""
    match = _DATE_TIME.match(raw)
    if not match:
        raise ParseError("bad date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = match.groups()
    try:
        month = _MONTHS.index(mon.decode().lower()) + 1
        offset = timedelta(hours=int(zh), minutes=int(zm)) * (1 if sign == b"+" else -1)
        return datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset))
    except ValueError:
        raise ParseError("bad date-time") from None


def parse_date(raw: bytes) -> datetime:
    """RFC 3501 date (SEARCH): `d-Mon-yyyy`, as a naive calendar date."""
    match = _DATE.match(raw)
    if not match:
        raise ParseError("bad date")
    day, mon, year = match.groups()
    try:
        return datetime(int(year), _MONTHS.index(mon.decode().lower()) + 1, int(day))
    except ValueError:
        raise ParseError("bad date") from None


def format_date_time(value: datetime) -> bytes:
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return (f"{value.day:02d}-{_MONTHS[value.month - 1].capitalize()}-{value.year:04d} "
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"
            ).encode("ascii")


# ------------------------------------------------------------------ output

_SAFE_QUOTED = re.compile(rb'^[\x20-\x7e]*$')


def quote(value: bytes | str | None) -> bytes:
    """An nstring for output: NIL, "quoted" or a {literal} when needed."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    if _SAFE_QUOTED.match(value) and len(value) < 1024:
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def astring_out(value: bytes) -> bytes:
    """A mailbox name for output: atom-like names unquoted are legal but quoting is always safe."""
    return quote(value)
