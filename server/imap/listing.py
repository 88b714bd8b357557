"""LIST and LSUB (RFC 3501 §6.3.8-9) with LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819),
SPECIAL-USE attributes (RFC 6154) and CHILDREN (RFC 3348).

Names are Unicode in the store and modified UTF-7 on the wire; `*` matches
across levels, `%` within one; INBOX matches case-insensitively. The store
creates parents along with children, so no existing mailbox is ever \\Noselect.
Subscriptions are a list of names of their own (RFC 3501 §6.3.6): a subscribed
name whose mailbox was deleted shows as \\NonExistent \\Subscribed in
LIST (SUBSCRIBED) and as \\Noselect in LSUB, as does LSUB's placeholder for
an unsubscribed parent of a subscribed child.
"""
from __future__ import annotations

import re

from . import utf7
from .parser import Atom, ParseError, quote

DELIMITER = "/"
_SELECTION = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
_RETURN = {b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE", b"STATUS"}


def pattern_regex(pattern: str) -> re.Pattern:
    if pattern[:5].upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in "/*%"):
        pattern = "INBOX" + pattern[5:]
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _patterns(token) -> list[bytes]:  # noqa: ANN001
    if isinstance(token, list):
        if not token:
            raise ParseError("empty pattern list")
        items = token
    else:
        items = [token]
    result = []
    for item in items:
        if isinstance(item, list):
            raise ParseError("bad mailbox pattern")
        result.append(bytes(item))
    return result


def _decode_pattern(raw: bytes) -> str:
    # A pattern that is not valid modified UTF-7 simply matches no mailbox name (no error).
    try:
        return utf7.decode(raw)
    except utf7.BadMailboxEncoding:
        return raw.decode("latin-1")


async def run_list(session, args, *, lsub: bool) -> None:  # noqa: ANN001
    selection: set[bytes] = set()
    returns: set[bytes] = set()
    status_items: list[bytes] = []
    if not lsub and isinstance(args.peek(), list):
        for item in args.list("selection options"):
            if not isinstance(item, Atom) or bytes(item).upper() not in _SELECTION:
                raise ParseError("unknown LIST selection option")
            selection.add(bytes(item).upper())
        if selection == {b"RECURSIVEMATCH"} or (b"RECURSIVEMATCH" in selection and selection <= {
                b"RECURSIVEMATCH", b"REMOTE"}):
            raise ParseError("RECURSIVEMATCH needs another selection option")
    reference = args.astring("reference")
    patterns = _patterns(args.next("mailbox pattern"))
    if not lsub and args.more():
        word = args.atom("RETURN")
        if word.upper() != b"RETURN":
            raise ParseError("RETURN expected")
        options = args.list("return options")
        index = 0
        while index < len(options):
            item = options[index]
            if not isinstance(item, Atom) or bytes(item).upper() not in _RETURN:
                raise ParseError("unknown LIST return option")
            option = bytes(item).upper()
            returns.add(option)
            if option == b"STATUS":
                index += 1
                if index >= len(options) or not isinstance(options[index], list):
                    raise ParseError("STATUS needs an item list")
                from .protocol import _STATUS_ITEMS

                for status_item in options[index]:
                    if not isinstance(status_item, Atom) or bytes(status_item).upper() not in _STATUS_ITEMS:
                        raise ParseError("unknown status item")
                    status_items.append(bytes(status_item).upper())
            index += 1
    args.end()
    verb = b"LSUB" if lsub else b"LIST"
    if len(patterns) == 1 and patterns[0] == b"" and not selection:
        # §6.3.8: an empty pattern asks for the delimiter and the root of the reference.
        session.send(b"* " + verb + b' (\\Noselect) "/" ""')
        return
    regexes = [pattern_regex(_decode_pattern(reference + pattern)) for pattern in patterns]
    # Subscriptions are names of their own: they outlive a deleted mailbox (RFC 3501 §6.3.6).
    mailboxes, subscribed_names = await session.store.list_mailboxes_and_subscriptions(session.account.id)
    existing = {mb.name: mb for mb in mailboxes}
    names = list(existing)
    subscribed = set(subscribed_names)

    def has_children(name: str) -> bool:
        prefix = name + DELIMITER
        return any(other.startswith(prefix) for other in names)

    def matches(name: str) -> bool:
        return any(regex.match(name) for regex in regexes)

    lines: list[bytes] = []
    if lsub:
        listed = set()
        for name in sorted(subscribed):
            if matches(name):
                # Without LIST-EXTENDED syntax a subscribed name whose mailbox is gone is \Noselect.
                attrs = b"()" if name in existing else b"(\\Noselect)"
                lines.append(b"* LSUB " + attrs + b" \"/\" " + quote(utf7.encode(name)))
                listed.add(name)
        # RFC 3501 §6.3.9: with %, an unsubscribed parent of a subscribed child shows as \Noselect.
        for name in sorted(subscribed):
            if matches(name):
                continue
            levels = name.split(DELIMITER)
            for depth in range(1, len(levels)):
                parent = DELIMITER.join(levels[:depth])
                if parent not in listed and parent not in subscribed and matches(parent):
                    lines.append(b"* LSUB (\\Noselect) \"/\" " + quote(utf7.encode(parent)))
                    listed.add(parent)
        if lines:
            session.write(b"\r\n".join(lines) + b"\r\n")
        return

    statuses = {}
    if status_items:
        statuses = {status.mailbox.name: status for status in await session.store.list_status(session.account.id)}
    show_subscribed = b"SUBSCRIBED" in selection or b"SUBSCRIBED" in returns
    candidates = set(existing)
    if b"SUBSCRIBED" in selection:
        candidates |= subscribed
        if b"RECURSIVEMATCH" in selection:
            for name in subscribed:
                levels = name.split(DELIMITER)
                candidates.update(DELIMITER.join(levels[:depth]) for depth in range(1, len(levels)))
    for name in sorted(candidates):
        if not matches(name):
            continue
        mailbox = existing.get(name)
        extra = b""
        if b"SUBSCRIBED" in selection and name not in subscribed:
            # RFC 5258 §4: CHILDINFO only for matching descendants the patterns do not list themselves.
            if b"RECURSIVEMATCH" in selection and any(
                    other.startswith(name + DELIMITER) and not matches(other) for other in subscribed):
                extra = b' ("CHILDINFO" ("SUBSCRIBED"))'
            else:
                continue
        if b"SPECIAL-USE" in selection and (mailbox is None or mailbox.special_use is None):
            continue
        if mailbox is None:
            # RFC 5258 §3: a subscribed (or CHILDINFO) name without a mailbox; \NonExistent implies \Noselect.
            attrs = [b"\\NonExistent"]
        else:
            attrs = [b"\\HasChildren" if has_children(name) else b"\\HasNoChildren"]
        if show_subscribed and name in subscribed:
            attrs.append(b"\\Subscribed")
        if mailbox is not None and mailbox.special_use is not None:
            attrs.append(mailbox.special_use.value.encode())
        encoded = quote(utf7.encode(name))
        lines.append(b"* LIST (" + b" ".join(attrs) + b") \"/\" " + encoded + extra)
        if status_items and name in statuses:
            from .protocol import status_items as render_status

            lines.append(b"* STATUS " + encoded + b" " + render_status(statuses[name], status_items))
    if lines:
        session.write(b"\r\n".join(lines) + b"\r\n")
