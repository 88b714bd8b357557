"""An in-memory LRU of what IMAP FETCH reads of mailbox entries that never changes.

A UID names one message for good within its mailbox's UIDVALIDITY (RFC 3501 §2.3.1.1),
and a message's bytes, size, internal date and parse cache never change. Entries are
kept under (incarnation, UID), the incarnation being (account id, mailbox id,
UIDVALIDITY), since SQLite may give a deleted mailbox's id to a new one. So those can be served again without
the database, the way Dovecot answers repeated FETCHes from its index cache and the
page cache. Flags, keywords and modseq change; the `meta` kept here carries the
values of the first read and callers take theirs from their session's view.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import FetchedMessage

#: (account id, mailbox id, UIDVALIDITY)
Incarnation = tuple[int, int, int]
#: Messages bigger than this are not kept (one 50 MB attachment would push out everything else).
MAX_ITEM_BYTES = 1 << 20
#: Rough cost of a decoded parse cache beyond the header it describes, and of the bookkeeping.
_CACHE_OVERHEAD = 1024


class EntryPartsCache:
    """LRU of FetchedMessage by (incarnation, uid) within a byte budget (approximate: raw bytes +
    header size + a fixed overhead per entry)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[Incarnation, int], tuple[FetchedMessage, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, incarnation: Incarnation, uid: int, *, cache: bool, raw: bool) -> FetchedMessage | None:
        item = self._items.get((incarnation, uid))
        if item is None or (cache and item[0].cache is None) or (raw and item[0].raw is None):
            self.misses += 1
            return None
        self._items.move_to_end((incarnation, uid))
        self.hits += 1
        return item[0]

    def put(self, incarnation: Incarnation, message: FetchedMessage) -> None:
        if not self.budget or message.meta.size > MAX_ITEM_BYTES:
            return
        key = (incarnation, message.meta.uid)
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old[1]
            # Keep what either read brought (one FETCH asked for the structure, another for the bytes).
            message = replace(message, cache=message.cache if message.cache is not None else old[0].cache,
                              raw=message.raw if message.raw is not None else old[0].raw)
        cost = (len(message.raw) if message.raw is not None else 0) + _CACHE_OVERHEAD \
            + (message.header_size * 2 if message.cache is not None else 0)
        self._items[key] = (message, cost)
        self.used += cost
        while self.used > self.budget and self._items:
            _, (_, dropped) = self._items.popitem(last=False)
            self.used -= dropped
