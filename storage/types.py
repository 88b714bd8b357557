"""Plain values the store hands out: frozen dataclasses, never ORM objects.

Every protocol (SMTP, POP3, IMAP), the CLI and the tests speak to the store in
these types only, so no lazy load can happen after a session closed.
"""
from __future__ import annotations

import enum
from array import array
from dataclasses import dataclass
from datetime import datetime


class Flag(enum.IntFlag):
    """System flags as a bitmask (RFC 3501 §2.3.2), plus Casella's own bits."""

    SEEN = 1
    ANSWERED = 2
    FLAGGED = 4
    DELETED = 8
    DRAFT = 16
    # Internal: hidden from POP3 by the `keep` pop3_delete policy; never shown to IMAP.
    POP3_HIDDEN = 1 << 16


#: IMAP names of the system flags, in the order clients usually expect.
SYSTEM_FLAG_NAMES: dict[Flag, str] = {
    Flag.SEEN: "\\Seen",
    Flag.ANSWERED: "\\Answered",
    Flag.FLAGGED: "\\Flagged",
    Flag.DELETED: "\\Deleted",
    Flag.DRAFT: "\\Draft",
}
# Plain ints: a Flag would make every mask operation downstream an enum operation (slow).
_FLAG_BY_NAME = {name.lower(): int(flag) for flag, name in SYSTEM_FLAG_NAMES.items()}

VISIBLE_FLAGS_MASK = int(Flag.SEEN | Flag.ANSWERED | Flag.FLAGGED | Flag.DELETED | Flag.DRAFT)


# Every combination of the system flags, precomputed: enum arithmetic per flag per message was a
# tenth of the IMAP loop's time under imaptest.
_SYSTEM_BITS = int(Flag.SEEN | Flag.ANSWERED | Flag.FLAGGED | Flag.DELETED | Flag.DRAFT)
_NAMES_BY_BITS: tuple[tuple[str, ...], ...] = tuple(
    tuple(name for flag, name in SYSTEM_FLAG_NAMES.items() if bits & int(flag)) for bits in range(_SYSTEM_BITS + 1))


def flags_to_names(flags: int, keywords: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The IMAP flag list for a bitmask and keyword tuple."""
    names = _NAMES_BY_BITS[flags & _SYSTEM_BITS]
    return names + tuple(keywords) if keywords else names


def names_to_flags(names: "list[str] | tuple[str, ...]") -> tuple[int, tuple[str, ...]]:
    """Split IMAP flag names into (system bitmask, sorted keywords).

    `\\Recent` is session state, never stored (RFC 3501 §2.3.2), so it is dropped.
    """
    bits = 0
    keywords: set[str] = set()
    for name in names:
        flag = _FLAG_BY_NAME.get(name.lower())
        if flag is not None:
            bits |= flag
        elif name.lower() == "\\recent":
            continue
        elif name.startswith("\\"):
            raise ValueError(f"unknown system flag {name}")
        else:
            keywords.add(name)
    return bits, tuple(sorted(keywords))


class Pop3DeletePolicy(str, enum.Enum):
    """What a POP3 DELE does when applied at QUIT (see DESIGN.md)."""

    EXPUNGE = "expunge"
    ARCHIVE = "archive"
    KEEP = "keep"


class SpecialUse(str, enum.Enum):
    """RFC 6154 mailbox roles."""

    ALL = "\\All"
    ARCHIVE = "\\Archive"
    DRAFTS = "\\Drafts"
    FLAGGED = "\\Flagged"
    JUNK = "\\Junk"
    SENT = "\\Sent"
    TRASH = "\\Trash"


#: Folders every new account gets, with their RFC 6154 role.
DEFAULT_MAILBOXES: tuple[tuple[str, SpecialUse | None], ...] = (
    ("INBOX", None),
    ("Sent", SpecialUse.SENT),
    ("Drafts", SpecialUse.DRAFTS),
    ("Trash", SpecialUse.TRASH),
    ("Junk", SpecialUse.JUNK),
    ("Archive", SpecialUse.ARCHIVE),
)


@dataclass(frozen=True, slots=True)
class Domain:
    id: int
    name: str
    catchall: str | None


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str
    domain: str
    quota_bytes: int | None
    used_bytes: int
    pop3_delete_policy: Pop3DeletePolicy | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Alias:
    id: int
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    id: int
    account_id: int
    name: str
    uidvalidity: int
    uidnext: int
    highest_modseq: int
    special_use: SpecialUse | None
    subscribed: bool


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """What IMAP STATUS reports (RFC 3501 §6.3.10, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE)."""

    mailbox: MailboxInfo
    messages: int
    unseen: int
    recent: int
    size: int


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """One entry of a mailbox as a session's view needs it."""

    uid: int
    flags: int
    keywords: tuple[str, ...]
    modseq: int
    size: int
    internaldate: datetime
    content_id: int

    @property
    def flag_names(self) -> tuple[str, ...]:
        return flags_to_names(self.flags & VISIBLE_FLAGS_MASK, self.keywords)


@dataclass(frozen=True, slots=True)
class MailboxSnapshot:
    """A mailbox as one session selects it: its entries in UID order."""

    mailbox: MailboxInfo
    messages: tuple[MessageMeta, ...]
    #: UIDs this session sees with \\Recent (RFC 3501 §2.3.2): claimed by this select only.
    recent_uids: frozenset[int]
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MailboxIndex:
    """A mailbox as an IMAP session selects it, lean: parallel arrays in UID order.

    What a session's view needs at SELECT time (UIDs, flags, modseq, keywords);
    sizes, internal dates and content ids are read per FETCH/SEARCH instead. On
    100,000 messages this loads in a few dozen milliseconds where building
    MessageMeta objects (MailboxSnapshot) takes about a second.
    """

    mailbox: MailboxInfo
    uids: array
    flags: array
    modseqs: array
    #: Keywords of the messages that have any, by UID (most messages have none).
    message_keywords: dict[int, tuple[str, ...]]
    #: UIDs this session sees with \\Recent (RFC 3501 §2.3.2): claimed by this select only.
    recent_uids: frozenset[int]
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    uid: int
    flags: int
    keywords: tuple[str, ...]
    modseq: int


@dataclass(frozen=True, slots=True)
class StoreResult:
    """Outcome of a flag change (RFC 7162 UNCHANGEDSINCE may refuse some UIDs)."""

    updated: tuple[FlagUpdate, ...]
    failed_uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AppendResult:
    uidvalidity: int
    uid: int


@dataclass(frozen=True, slots=True)
class CopyResult:
    """RFC 4315 COPYUID: source UIDs and the UIDs they got in the target."""

    uidvalidity: int
    source_uids: tuple[int, ...]
    target_uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Delivery:
    account_id: int
    mailbox_id: int
    uid: int


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where one RCPT TO address goes."""

    address: str
    local: bool
    account_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ChangesSince:
    """RFC 7162 resync data: entries with modseq > N and UIDs expunged since N."""

    changed: tuple[MessageMeta, ...]
    vanished: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OutboundItem:
    id: int
    mail_from: str
    recipients: tuple[str, ...]
    content_id: int
    created_at: datetime
    next_attempt_at: datetime
    attempts: int
    last_error: str | None
