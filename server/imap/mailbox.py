"""One session's view of its selected mailbox (RFC 3501 §2.3.1.2, §7.4.1).

The view holds the UIDs the session has announced, in order (sequence number
= position + 1), with their flags and modseq. Store change events are queued
and applied only when `flush()` is called at a point where RFC 3501 allows
untagged updates: EXISTS and FETCH FLAGS after any command, EXPUNGE (or
RFC 7162 VANISHED) never after FETCH, STORE or SEARCH, so sequence numbers
never shift under a client's feet. Events are applied idempotently (by UID
and per-message modseq), so an event that raced with the SELECT snapshot is
harmless.
"""
from __future__ import annotations

from bisect import bisect_left

from storage.changes import FlagsChanged, MailboxDeleted, MessageAdded, MessagesExpunged
from storage.types import VISIBLE_FLAGS_MASK, MailboxIndex, MailboxInfo, MessageMeta, flags_to_names

from .parser import STAR, ParseError, format_uid_set


class Entry:
    """Flags and modseq of one announced message (slots: a 100,000-message view stays small and quick)."""

    __slots__ = ("flags", "keywords", "modseq")

    def __init__(self, flags: int, keywords: tuple[str, ...], modseq: int) -> None:
        self.flags = flags
        self.keywords = keywords
        self.modseq = modseq


class EntryTable:
    """uid -> Entry over the arrays of the SELECT (storage MailboxIndex), with the entries that
    changed since kept in a dict on top: opening a 100,000-message mailbox builds no object per
    message, and an Entry is made only when a command asks for one."""

    __slots__ = ("_uids", "_flags", "_modseqs", "_keywords", "_changed", "_removed")

    def __init__(self, index: MailboxIndex) -> None:
        self._uids = index.uids
        self._flags = index.flags
        self._modseqs = index.modseqs
        self._keywords = index.message_keywords
        self._changed: dict[int, Entry] = {}
        self._removed: set[int] = set()

    def get(self, uid: int, default: Entry | None = None) -> Entry | None:
        entry = self._changed.get(uid)
        if entry is not None:
            return entry
        if uid in self._removed:
            return default
        uids = self._uids
        index = bisect_left(uids, uid)
        if index < len(uids) and uids[index] == uid:
            return Entry(self._flags[index], self._keywords.get(uid, ()), self._modseqs[index])
        return default

    def __getitem__(self, uid: int) -> Entry:
        entry = self.get(uid)
        if entry is None:
            raise KeyError(uid)
        return entry

    def __contains__(self, uid: int) -> bool:
        return self.get(uid) is not None

    def __setitem__(self, uid: int, entry: Entry) -> None:
        self._changed[uid] = entry
        self._removed.discard(uid)

    def pop(self, uid: int, default: Entry | None = None) -> Entry | None:
        entry = self.get(uid)
        if entry is None:
            return default
        self._changed.pop(uid, None)
        self._removed.add(uid)
        return entry

    def columns(self, uids: list[int]) -> tuple:
        """(flags, keywords, modseqs) for ascending, known `uids`, as three sequences: the bulk path
        of FETCH 1:* (FLAGS) and SEARCH. A run of the SELECT's UIDs is sliced out of its arrays
        (no object per message); the entries changed since are patched in."""
        count = len(uids)
        if not count:
            return [], [], []
        base = self._uids
        start = bisect_left(base, uids[0])
        end = start + count
        if end <= len(base) and base[end - 1] == uids[-1]:
            # Same first, last and count, both ascending without repeats: uids == base[start:end].
            flags, modseqs = self._flags[start:end], self._modseqs[start:end]
            keywords: list[tuple[str, ...]] = [()] * count
            low, high = uids[0], uids[-1]
            for uid, words in self._keywords.items():
                if low <= uid <= high:
                    keywords[bisect_left(base, uid) - start] = words
            for uid, entry in self._changed.items():
                if low <= uid <= high:
                    index = bisect_left(base, uid) - start
                    flags[index], keywords[index], modseqs[index] = entry.flags, entry.keywords, entry.modseq
            return flags, keywords, modseqs
        flags_out, keywords_out, modseqs_out = [], [], []
        for uid in uids:
            entry = self[uid]
            flags_out.append(entry.flags)
            keywords_out.append(entry.keywords)
            modseqs_out.append(entry.modseq)
        return flags_out, keywords_out, modseqs_out

    def pristine_flags(self, count: int):  # noqa: ANN201
        """The SELECT's flags array while nothing changed and `count` UIDs are announced, else None."""
        if self._changed or self._removed or count != len(self._uids):
            return None
        return self._flags


class MailboxView:
    def __init__(self, index: MailboxIndex, readonly: bool) -> None:
        self.info: MailboxInfo = index.mailbox
        self.id = index.mailbox.id
        self.readonly = readonly
        self.uids: list[int] = list(index.uids)
        # Sizes, internal dates and content ids, filled by FETCH and SEARCH as they read them.
        self.meta: dict[int, MessageMeta] = {}
        self.entries = EntryTable(index)
        self.recent: set[int] = set(index.recent_uids)
        self.recent_reported = len(self.recent)
        self.keywords: set[str] = set(index.keywords)
        self.uidnext = index.mailbox.uidnext
        self.highest_modseq = index.mailbox.highest_modseq
        self.pending_added: dict[int, Entry] = {}
        self.pending_expunged: set[int] = set()
        self.dirty: set[int] = set()
        self.gone: set[int] = set()
        self.deleted = False
        self.new_keywords = False
        # UIDs whose FETCH FLAGS this session already reported itself (its own STORE).
        self.self_reported: dict[int, int] = {}

    # ---------------------------------------------------------------- lookups

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        index = bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def first_unseen(self) -> int | None:
        """Sequence number of the first message without \\Seen (SELECT's [UNSEEN n])."""
        flags = self.entries.pristine_flags(len(self.uids))
        if flags is not None:
            for index, value in enumerate(flags):
                if not value & 1:
                    return index + 1
            return None
        for index, uid in enumerate(self.uids):
            if not self.entries[uid].flags & 1:
                return index + 1
        return None

    def flag_names(self, uid: int) -> tuple[str, ...]:
        entry = self.entries[uid]
        names = flags_to_names(entry.flags & VISIBLE_FLAGS_MASK, entry.keywords)
        if uid in self.recent:
            names = names + ("\\Recent",)
        return names

    def resolve(self, ranges: list[tuple[int, int]], uid: bool) -> list[int]:
        """UIDs (ascending) named by a sequence set; §6.4.8 rules for UID sets."""
        if not uid:
            count = len(self.uids)
            result: set[int] = set()
            for lo, hi in ranges:
                if count == 0:
                    if lo == STAR or hi == STAR:
                        continue
                    raise ParseError("no messages in mailbox")
                lo = count if lo == STAR else lo
                hi = count if hi == STAR else hi
                if lo > hi:
                    lo, hi = hi, lo
                if hi > count:
                    raise ParseError("sequence number out of range")
                result.update(self.uids[lo - 1:hi])
            return sorted(result)
        if not self.uids:
            return []
        top = self.uids[-1]
        chosen: set[int] = set()
        for lo, hi in ranges:
            lo = top if lo == STAR else lo
            hi = top if hi == STAR else hi
            if lo > hi:
                lo, hi = hi, lo
            start = bisect_left(self.uids, lo)
            end = bisect_left(self.uids, hi + 1)
            chosen.update(self.uids[start:end])
        return sorted(chosen)

    # ---------------------------------------------------------------- events

    def apply(self, change) -> None:  # noqa: ANN001
        if isinstance(change, MessageAdded):
            self.highest_modseq = max(self.highest_modseq, change.modseq)
            if change.uid in self.entries or change.uid in self.gone:
                return
            if self.uids and change.uid <= self.uids[-1]:
                return
            self.pending_added[change.uid] = Entry(change.flags, change.keywords, change.modseq)
            self.uidnext = max(self.uidnext, change.uid + 1)
        elif isinstance(change, MessagesExpunged):
            self.highest_modseq = max(self.highest_modseq, change.modseq)
            for uid in change.uids:
                self.gone.add(uid)
                if self.pending_added.pop(uid, None) is not None:
                    # Never announced, so it leaves no trace: a \Recent claimed for it meanwhile
                    # would make RECENT count a message EXISTS never did.
                    self.recent.discard(uid)
                if uid in self.entries:
                    self.pending_expunged.add(uid)
        elif isinstance(change, FlagsChanged):
            self.highest_modseq = max(self.highest_modseq, change.modseq)
            uid = change.uid
            table = self.entries if uid in self.entries else self.pending_added
            entry = table.get(uid)
            if entry is None or change.modseq <= entry.modseq:
                return
            table[uid] = Entry(change.flags, change.keywords, change.modseq)
            if table is self.entries and self.self_reported.get(change.uid) != change.modseq:
                self.dirty.add(change.uid)
            self._learn_keywords(change.keywords)
        elif isinstance(change, MailboxDeleted):
            self.deleted = True

    def _learn_keywords(self, keywords: tuple[str, ...]) -> None:
        for keyword in keywords:
            if keyword not in self.keywords:
                self.keywords.add(keyword)
                self.new_keywords = True

    def update_own(self, uid: int, flags: int, keywords: tuple[str, ...], modseq: int) -> None:
        """This session's own STORE: apply now, so its echo from the bus is not reported twice."""
        entry = self.entries.get(uid)
        if entry is None:
            return
        if modseq >= entry.modseq:
            self.entries[uid] = Entry(flags, keywords, modseq)
        self.self_reported[uid] = modseq
        self.dirty.discard(uid)
        self.highest_modseq = max(self.highest_modseq, modseq)
        self._learn_keywords(keywords)

    def add_recent(self, uids) -> None:  # noqa: ANN001
        self.recent.update(uid for uid in uids if uid in self.entries or uid in self.pending_added)

    def flush(self, *, allow_expunge: bool, condstore: bool, qresync: bool,
              flags_line) -> list[bytes]:  # noqa: ANN001
        """Untagged responses for queued changes that may be reported now."""
        out: list[bytes] = []
        if self.new_keywords:
            self.new_keywords = False
            out.append(flags_line())
        if allow_expunge and self.pending_expunged:
            gone = sorted(self.pending_expunged)
            self.pending_expunged.clear()
            if qresync:
                # RFC 7162 §3.2.10: VANISHED replaces EXPUNGE once QRESYNC is enabled.
                for uid in gone:
                    self._remove(uid)
                out.append(b"* VANISHED " + format_uid_set(gone))
            else:
                for uid in gone:
                    seq = self.seq_of(uid)
                    if seq is None:
                        continue
                    self._remove(uid)
                    out.append(b"* %d EXPUNGE" % seq)
        if self.pending_added:
            self.recent_reported = -1
            for uid in sorted(self.pending_added):
                entry = self.pending_added.pop(uid)
                self.uids.append(uid)
                self.entries[uid] = entry
                self._learn_keywords(entry.keywords)
            if self.new_keywords:
                self.new_keywords = False
                out.append(flags_line())
            out.append(b"* %d EXISTS" % len(self.uids))
        if self.recent_reported != len(self.recent):
            # A \Recent claim that completed after EXISTS was sent updates the count (§7.3.2).
            self.recent_reported = len(self.recent)
            out.append(b"* %d RECENT" % len(self.recent))
        if self.dirty:
            for uid in sorted(self.dirty):
                if uid in self.pending_expunged:
                    continue
                seq = self.seq_of(uid)
                if seq is None:
                    continue
                entry = self.entries[uid]
                names = " ".join(self.flag_names(uid)).encode("utf-8")
                extra = b""
                if qresync:
                    extra += b" UID %d" % uid
                if condstore:
                    extra += b" MODSEQ (%d)" % entry.modseq
                out.append(b"* %d FETCH (FLAGS (%s)%s)" % (seq, names, extra))
            self.dirty.clear()
        self.self_reported.clear()
        return out

    def _remove(self, uid: int) -> None:
        index = bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            del self.uids[index]
        self.entries.pop(uid, None)
        self.meta.pop(uid, None)
        if uid in self.recent:
            # The client forgets a \Recent message with its EXPUNGE: no RECENT update needed.
            self.recent.discard(uid)
            if self.recent_reported > 0:
                self.recent_reported -= 1
        self.dirty.discard(uid)
