"""SEARCH keys (RFC 3501 §6.4.4, RFC 7162 §3.1.5 MODSEQ) parsed into predicates.

Keys on flags, sizes, dates, UIDs and sequence numbers are answered from the
session's view; header keys decode RFC 2047 words and body keys decode
transfer encodings and charsets, both case-insensitively (as Dovecot does),
on the raw bytes loaded for the messages that need them.
Not implemented: SEARCHRES `$`, ESEARCH, fuzzy search.
"""
from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from datetime import date, datetime
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime
from typing import Callable

from .parser import STAR, Atom, ParseError, is_sequence_set, parse_date, parse_number, parse_sequence_set

_SUPPORTED_CHARSETS = {"UTF-8", "US-ASCII", "UTF8"}


class BadCharset(Exception):
    """NO [BADCHARSET (UTF-8 US-ASCII)] (RFC 3501 §6.4.4)."""


@dataclass
class Candidate:
    seq: int
    uid: int
    flags: int
    keywords: tuple[str, ...]
    size: int
    internaldate: datetime
    modseq: int
    recent: bool
    raw: bytes | None = None
    _message: object | None = None

    def message(self):  # noqa: ANN201
        if self._message is None:
            self._message = email.message_from_bytes(self.raw or b"", policy=email.policy.compat32)
        return self._message


@dataclass
class Query:
    predicate: Callable[[Candidate], bool]
    needs_raw: bool
    uses_modseq: bool
    #: LARGER/SMALLER/BEFORE/ON/SINCE: sizes and internal dates, which SELECT does not load.
    needs_meta: bool = False


def _text(value: bytes, charset: str) -> str:
    try:
        return value.decode("utf-8" if charset.upper() in ("UTF-8", "UTF8") else "ascii").casefold()
    except UnicodeDecodeError:
        raise ParseError("search string not in the given charset") from None


def _decode_header_value(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - broken encoded words are searched as written
        return value


def _header_values(msg: Candidate, name: str) -> list[str]:
    return [_decode_header_value(str(v)) for v in (msg.message().get_all(name) or [])]


def _address_values(msg: Candidate, name: str) -> list[str]:
    """The header as written, plus each address normalized (`user (c)@ domain` -> `user@domain`)."""
    values = _header_values(msg, name)
    normalized = [f"{display} <{address}>" if display else address for display, address in getaddresses(values)]
    return values + normalized


def _body_text(msg: Candidate) -> str:
    texts = []
    for part in msg.message().walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        if part.get_content_maintype() in ("text", "message") or not part.get_content_maintype():
            charset = part.get_content_charset() or "utf-8"
            try:
                texts.append(payload.decode(charset, "replace"))
            except LookupError:
                texts.append(payload.decode("utf-8", "replace"))
    return "\n".join(texts).casefold()


def _sent_date(msg: Candidate) -> date | None:
    value = msg.message().get("date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(str(value)).date()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Parser:
    def __init__(self, tokens: list, charset: str, view_max_seq: int, view_max_uid: int) -> None:
        self.tokens = tokens
        self.i = 0
        self.charset = charset
        self.max_seq = view_max_seq
        self.max_uid = view_max_uid
        self.needs_raw = False
        self.uses_modseq = False
        self.needs_meta = False

    def next(self):  # noqa: ANN201
        if self.i >= len(self.tokens):
            raise ParseError("missing search argument")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def atom(self) -> bytes:
        token = self.next()
        if isinstance(token, list):
            raise ParseError("unexpected list in search")
        return bytes(token)

    def string(self) -> str:
        return _text(self.atom(), self.charset)

    def all(self) -> Callable[[Candidate], bool]:
        preds = []
        while self.i < len(self.tokens):
            preds.append(self.key())
        if not preds:
            raise ParseError("missing search key")
        return _and(preds)

    def key(self) -> Callable[[Candidate], bool]:
        token = self.next()
        if isinstance(token, list):
            sub = _Parser(token, self.charset, self.max_seq, self.max_uid)
            pred = sub.all()
            self.needs_raw |= sub.needs_raw
            self.uses_modseq |= sub.uses_modseq
            self.needs_meta |= sub.needs_meta
            return pred
        if not isinstance(token, Atom):
            raise ParseError("search key expected")
        word = bytes(token).upper()
        flag_keys = {b"ANSWERED": 2, b"DELETED": 8, b"DRAFT": 16, b"FLAGGED": 4, b"SEEN": 1}
        if word == b"ALL":
            return lambda m: True
        if word in flag_keys:
            bit = flag_keys[word]
            return lambda m: bool(m.flags & bit)
        if word.startswith(b"UN") and word[2:] in flag_keys:
            bit = flag_keys[word[2:]]
            return lambda m: not m.flags & bit
        if word == b"NEW":
            return lambda m: m.recent and not m.flags & 1
        if word == b"OLD":
            return lambda m: not m.recent
        if word == b"RECENT":
            return lambda m: m.recent
        if word in (b"KEYWORD", b"UNKEYWORD"):
            keyword = self.atom().decode("utf-8", "replace").lower()
            system = {"\\seen": 1, "\\answered": 2, "\\flagged": 4, "\\deleted": 8, "\\draft": 16}
            if keyword in system:
                bit = system[keyword]
                has = (lambda m: bool(m.flags & bit))
            else:
                has = (lambda m: keyword in (k.lower() for k in m.keywords))
            return has if word == b"KEYWORD" else (lambda m: not has(m))
        if word in (b"LARGER", b"SMALLER"):
            number = parse_number(self.atom(), "size")
            self.needs_meta = True
            return (lambda m: m.size > number) if word == b"LARGER" else (lambda m: m.size < number)
        if word in (b"BEFORE", b"ON", b"SINCE"):
            day = parse_date(self.atom()).date()
            self.needs_meta = True
            get = lambda m: m.internaldate.date()  # noqa: E731
            return _date_pred(word, get, day)
        if word in (b"SENTBEFORE", b"SENTON", b"SENTSINCE"):
            day = parse_date(self.atom()).date()
            self.needs_raw = True
            return _date_pred(word[4:], _sent_date, day)
        if word in (b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT"):
            needle = self.string()
            name = word.decode().lower()
            self.needs_raw = True
            if name == "subject":
                return lambda m: any(needle in v.casefold() for v in _header_values(m, name))
            return lambda m: any(needle in v.casefold() for v in _address_values(m, name))
        if word == b"HEADER":
            name = self.atom().decode("latin-1").lower()
            needle = self.string()
            self.needs_raw = True
            return lambda m: any(needle in v.casefold() for v in _header_values(m, name))
        if word == b"BODY":
            needle = self.string()
            self.needs_raw = True
            return lambda m: needle in _body_text(m)
        if word == b"TEXT":
            needle = self.string()
            self.needs_raw = True

            def text(m: Candidate) -> bool:
                header = m.raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").casefold() if m.raw else ""
                decoded = " ".join(_decode_header_value(str(v)) for v in m.message().values()).casefold()
                return needle in header or needle in decoded or needle in _body_text(m)
            return text
        if word == b"NOT":
            inner = self.key()
            return lambda m: not inner(m)
        if word == b"OR":
            left, right = self.key(), self.key()
            return lambda m: left(m) or right(m)
        if word == b"UID":
            ranges = _resolve(parse_sequence_set(self.atom()), self.max_uid, uid=True)
            return lambda m: _in_ranges(m.uid, ranges)
        if word == b"MODSEQ":
            # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
            arg = self.next()
            if isinstance(arg, (bytes,)) and not bytes(arg).isdigit():
                self.next()  # entry type: priv/shared/all
                arg = self.next()
            value = parse_number(bytes(arg), "mod-sequence")
            self.uses_modseq = True
            return lambda m: m.modseq >= value
        if is_sequence_set(word):
            ranges = _resolve(parse_sequence_set(word), self.max_seq, uid=False)
            return lambda m: _in_ranges(m.seq, ranges)
        raise ParseError(f"unknown search key {word[:30].decode('latin-1')}")


def _date_pred(word: bytes, get, day: date):  # noqa: ANN001, ANN202
    def pred(m: Candidate) -> bool:
        value = get(m)
        if value is None:
            return False
        if word == b"BEFORE":
            return value < day
        if word == b"ON":
            return value == day
        return value >= day
    return pred


def _and(preds):  # noqa: ANN001, ANN202
    if len(preds) == 1:
        return preds[0]
    return lambda m: all(p(m) for p in preds)


def _resolve(ranges: list[tuple[int, int]], maximum: int, uid: bool) -> list[tuple[int, int]]:
    out = []
    for lo, hi in ranges:
        lo = maximum if lo == STAR else lo
        hi = maximum if hi == STAR else hi
        if lo > hi:
            lo, hi = hi, lo
        out.append((lo, hi))
    return out


def _in_ranges(value: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


def parse_search(tokens: list, charset: str, max_seq: int, max_uid: int) -> Query:
    if charset.upper() not in _SUPPORTED_CHARSETS:
        raise BadCharset(charset)
    parser = _Parser(tokens, charset, max_seq, max_uid)
    predicate = parser.all()
    return Query(predicate, parser.needs_raw, parser.uses_modseq, parser.needs_meta)
