"""SQLAlchemy 2.0 typed models: the Casella schema.

The store is the IMAP sync model (RFC 3501 §2.3.1.1, RFC 7162): per-mailbox
UIDVALIDITY and strictly increasing UIDs never reused (`uidnext` only grows),
a per-mailbox MODSEQ bumped by every change, and expunge tombstones for
QRESYNC. Message content is immutable and shared: COPY adds a
`mailbox_messages` row pointing at the same `messages` row.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import JSON


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


intpk = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
bigint = Annotated[int, mapped_column(BigInteger)]
address_str = Annotated[str, mapped_column(String(320))]
timestamp = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow)]


class Base(DeclarativeBase):
    pass


class DomainRow(Base):
    __tablename__ = "domains"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(255), unique=True)
    # Address (local account or alias target) that receives mail for unknown local parts.
    catchall: Mapped[str | None] = mapped_column(String(320), default=None)
    created_at: Mapped[timestamp]


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[intpk]
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    address: Mapped[address_str] = mapped_column(unique=True)
    # PHC string for argon2id; imported Dovecot hashes keep their {SCHEME} prefix.
    password_hash: Mapped[str] = mapped_column(Text)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    used_bytes: Mapped[bigint] = mapped_column(default=0)
    pop3_delete_policy: Mapped[str | None] = mapped_column(String(16), default=None)
    # Last UIDVALIDITY handed out in this account: a recreated mailbox never reuses one.
    last_uidvalidity: Mapped[bigint] = mapped_column(default=0)
    created_at: Mapped[timestamp]


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("source", "target"),)

    id: Mapped[intpk]
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    source: Mapped[address_str] = mapped_column(index=True)
    target: Mapped[address_str]
    created_at: Mapped[timestamp]


class MailboxRow(Base):
    __tablename__ = "mailboxes"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[intpk]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(1024))
    uidvalidity: Mapped[bigint]
    uidnext: Mapped[bigint] = mapped_column(default=1)
    highest_modseq: Mapped[bigint] = mapped_column(default=1)
    # UIDs >= this are \Recent for the next session that selects read-write (RFC 3501 §2.3.2).
    first_recent_uid: Mapped[bigint] = mapped_column(default=1)
    special_use: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[timestamp]


class SubscriptionRow(Base):
    """The account's subscription list (RFC 3501 §6.3.6): names, not mailboxes.

    A subscription outlives its mailbox (DELETE keeps it, RENAME does not move it,
    as Dovecot does) and may name a mailbox that does not exist (RFC 5258 \\NonExistent).
    """

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[intpk]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(1024))


class MessageRow(Base):
    """Immutable message content and its parse cache, shared by every mailbox entry."""

    __tablename__ = "messages"

    id: Mapped[intpk]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[bigint]
    header_size: Mapped[bigint]
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # Envelope, bodystructure with part offsets, common header fields (storage/mime.py).
    parse_cache: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[timestamp]


class MailboxMessageRow(Base):
    __tablename__ = "mailbox_messages"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "uid"),
        Index("ix_mailbox_messages_modseq", "mailbox_id", "modseq"),
    )

    id: Mapped[intpk]
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    uid: Mapped[bigint]
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    flags: Mapped[int] = mapped_column(Integer, default=0)
    # Space-separated IMAP keywords, sorted.
    keywords: Mapped[str] = mapped_column(Text, default="")
    internaldate: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    modseq: Mapped[bigint]
    size: Mapped[bigint]


class ExpungeRow(Base):
    """Tombstones: which UIDs vanished at which modseq (RFC 7162 VANISHED)."""

    __tablename__ = "expunges"
    __table_args__ = (Index("ix_expunges_modseq", "mailbox_id", "modseq"),)

    id: Mapped[intpk]
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    uid: Mapped[bigint]
    modseq: Mapped[bigint]


class MaildropLockRow(Base):
    """POP3 maildrop lock (RFC 1939 §8), in the database so it holds across processes."""

    __tablename__ = "maildrop_locks"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboundRow(Base):
    """A message waiting for remote delivery (RFC 5321 §4.5.4)."""

    __tablename__ = "outbound_queue"

    id: Mapped[intpk]
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    mail_from: Mapped[address_str]
    created_at: Mapped[timestamp]
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    delayed_notice_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    locked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class OutboundRecipientRow(Base):
    __tablename__ = "outbound_recipients"

    id: Mapped[intpk]
    queue_id: Mapped[int] = mapped_column(ForeignKey("outbound_queue.id", ondelete="CASCADE"), index=True)
    address: Mapped[address_str]
    domain: Mapped[str] = mapped_column(String(255))
    # pending | sent | failed
    status: Mapped[str] = mapped_column(String(16), default="pending")
    last_reply: Mapped[str | None] = mapped_column(Text, default=None)
