"""Prebuilt Core statements for the hot paths (delivery, append, flag changes, select, fetch).

Built once with bind parameters and executed on the session's connection:
measured here, that is about six times cheaper per statement than building an
ORM statement on every call (50 µs against 330 µs on this 2-core machine),
which is what lets group commit reach its delivery-rate goal.

Statements wrapped in FastStatement (integer and string parameters and columns only)
run on the driver's cursor instead (storage/fastsql.py): call them as
`q.NAME.first(conn, params)`, `.all`, `.one`, `.scalar_one` or `.run`.
"""
from __future__ import annotations

import functools
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Integer,
    LargeBinary,
    String,
    any_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy import Select, case, delete, exists  # FETCH variants, STATUS counts, expunge

from .fastsql import FastStatement
from .models import AccountRow, ExpungeRow, MailboxMessageRow, MailboxRow, MessageRow, OutboundRow, SubscriptionRow

messages = MessageRow.__table__
entries = MailboxMessageRow.__table__
mailboxes = MailboxRow.__table__
accounts = AccountRow.__table__

INSERT_CONTENT = insert(messages).returning(messages.c.id)

INSERT_ENTRY = insert(entries)

ACCOUNT_USAGE = FastStatement(select(accounts.c.used_bytes, accounts.c.quota_bytes)
                              .where(accounts.c.id == bindparam("account_id")))

ADD_USAGE = FastStatement(update(accounts).where(accounts.c.id == bindparam("account_id"))
                          .values(used_bytes=accounts.c.used_bytes + bindparam("delta")))

MAILBOX_ID = select(mailboxes.c.id).where(mailboxes.c.account_id == bindparam("account_id"),
                                          mailboxes.c.name == bindparam("name"))

# The row lock this takes orders concurrent writers of one mailbox on PostgreSQL.
ALLOCATE_UIDS = FastStatement(update(mailboxes).where(mailboxes.c.id == bindparam("mailbox_id"))
                              .values(uidnext=mailboxes.c.uidnext + bindparam("count"),
                                      highest_modseq=mailboxes.c.highest_modseq + 1)
                              .returning(mailboxes.c.uidnext, mailboxes.c.highest_modseq, mailboxes.c.uidvalidity))

BUMP_MODSEQ = FastStatement(update(mailboxes).where(mailboxes.c.id == bindparam("mailbox_id"))
                            .values(highest_modseq=mailboxes.c.highest_modseq + 1)
                            .returning(mailboxes.c.highest_modseq))

ENTRY_META_COLUMNS = (entries.c.uid, entries.c.flags, entries.c.keywords, entries.c.modseq, entries.c.size,
                      entries.c.internaldate, entries.c.message_id)

MAILBOX_ENTRIES = (select(*ENTRY_META_COLUMNS).where(entries.c.mailbox_id == bindparam("mailbox_id"))
                   .order_by(entries.c.uid))

SET_ENTRY_FLAGS = (update(entries).where(entries.c.id == bindparam("entry_id"))
                   .values(flags=bindparam("new_flags"), keywords=bindparam("new_keywords"),
                           modseq=bindparam("new_modseq")))

# ---- imap (issue 5): the lean SELECT (MailboxIndex). Three comma-joined strings in one row
# (group_concat / string_agg) instead of 100,000 rows: a third of the fetch time on SQLite and
# none of the per-row Python overhead. The ordered subquery gives the aggregates UID order in
# practice; the caller checks it and sorts if a planner ever does otherwise.
_ORDERED_ENTRIES = (select(entries.c.uid, entries.c.flags, entries.c.modseq)
                    .where(entries.c.mailbox_id == bindparam("mailbox_id")).order_by(entries.c.uid).subquery())

MAILBOX_INDEX = select(*(func.aggregate_strings(cast(column, String), ",") for column in (
    _ORDERED_ENTRIES.c.uid, _ORDERED_ENTRIES.c.flags, _ORDERED_ENTRIES.c.modseq)))

MAILBOX_KEYWORDS = select(entries.c.uid, entries.c.keywords).where(
    entries.c.mailbox_id == bindparam("mailbox_id"), entries.c.keywords != "")

# ---- imap (issue 5): STORE on many messages, one UPDATE per group of equal new flags
SET_FLAGS_BY_IDS = FastStatement(update(entries).where(entries.c.id.in_(bindparam("ids", expanding=True)))
                                 .values(flags=bindparam("new_flags"), keywords=bindparam("new_keywords"),
                                         modseq=bindparam("new_modseq")))

ENTRY_FLAG_COLUMNS = (entries.c.id, entries.c.uid, entries.c.flags, entries.c.keywords, entries.c.modseq)


# ---- smtp ingest (issue 3): a recipient's usage, quota, wanted mailbox and INBOX in one statement
_wanted = mailboxes.alias("wanted")
_inbox = mailboxes.alias("inbox")
DELIVERY_TARGET = select(
    accounts.c.used_bytes, accounts.c.quota_bytes,
    select(_wanted.c.id).where(_wanted.c.account_id == accounts.c.id, _wanted.c.name == bindparam("name"))
    .scalar_subquery(),
    select(_inbox.c.id).where(_inbox.c.account_id == accounts.c.id, _inbox.c.name == "INBOX").scalar_subquery(),
).where(accounts.c.id == bindparam("account_id"))


# ---- imap: the lookups every IMAP command starts with (mailbox by name or by id, subscription,
# \Recent claim, expunge candidates), as prebuilt statements: under imaptest's stress profile the
# ORM versions of these were the largest Python cost in the store's threads.
subscriptions = SubscriptionRow.__table__

_MAILBOX_COLUMNS = (mailboxes.c.id, mailboxes.c.account_id, mailboxes.c.name, mailboxes.c.uidvalidity,
                    mailboxes.c.uidnext, mailboxes.c.highest_modseq, mailboxes.c.first_recent_uid,
                    mailboxes.c.special_use)

MAILBOX_BY_NAME = FastStatement(select(*_MAILBOX_COLUMNS).where(mailboxes.c.account_id == bindparam("account_id"),
                                                                mailboxes.c.name == bindparam("name")))

MAILBOX_OWNED = FastStatement(select(*_MAILBOX_COLUMNS).where(mailboxes.c.id == bindparam("mailbox_id"),
                                                              mailboxes.c.account_id == bindparam("account_id")))

IS_SUBSCRIBED = FastStatement(select(subscriptions.c.id).where(subscriptions.c.account_id == bindparam("account_id"),
                                                               subscriptions.c.name == bindparam("name")))

# The row lock orders concurrent \Recent claims on PostgreSQL (SQLite has one writer anyway).
RECENT_CLAIM_STATE = FastStatement(select(mailboxes.c.first_recent_uid, mailboxes.c.uidnext, mailboxes.c.account_id,
                                          mailboxes.c.uidvalidity)
                                   .where(mailboxes.c.id == bindparam("mailbox_id")).with_for_update())

SET_FIRST_RECENT = FastStatement(update(mailboxes).where(mailboxes.c.id == bindparam("mailbox_id"))
                                 .values(first_recent_uid=bindparam("first_recent_uid")))

DELETED_ENTRIES = FastStatement(select(entries.c.uid, entries.c.message_id, entries.c.size)
                                .where(entries.c.mailbox_id == bindparam("mailbox_id"),
                                       entries.c.flags.op("&")(bindparam("deleted_flag")) != 0)
                                .order_by(entries.c.uid))


# ---- group commit (issues 3 and 6): many deliveries of one batch in a few statements. On PostgreSQL
# each statement is a round trip and the batches run one at a time, so per-message statements, not
# commits, bounded the rate. Arrays (unnest, = ANY) keep one SQL text whatever the batch size, so
# asyncpg prepares each statement once per connection. The CTEs lock rows in id order
# (ORDER BY applies before FOR UPDATE), so two processes' batches cannot deadlock on them.
def _delivery_targets(accounts_where):  # noqa: ANN001, ANN202
    return select(accounts.c.id, *DELIVERY_TARGET.selected_columns).where(accounts_where)


DELIVERY_TARGETS = _delivery_targets(accounts.c.id.in_(bindparam("account_ids", expanding=True)))

_ids = ARRAY(Integer)
DELIVERY_TARGETS_PG = _delivery_targets(accounts.c.id == any_(bindparam("account_ids", type_=_ids)))

_contents = func.unnest(
    bindparam("sha256", type_=ARRAY(String)), bindparam("size", type_=ARRAY(BigInteger)),
    bindparam("header_size", type_=ARRAY(BigInteger)), bindparam("raw", type_=ARRAY(LargeBinary)),
    bindparam("parse_cache", type_=ARRAY(JSON)),
).table_valued("sha256", "size", "header_size", "raw", "parse_cache", with_ordinality="n").render_derived()
# Ids come from the sequence in row order (ORDER BY n); the caller sorts what RETURNING gives back.
INSERT_CONTENTS_PG = insert(messages).from_select(
    ["sha256", "size", "header_size", "raw", "parse_cache", "created_at"],
    select(_contents.c.sha256, _contents.c.size, _contents.c.header_size, _contents.c.raw, _contents.c.parse_cache,
           bindparam("created_at", type_=DateTime(timezone=True))).order_by(_contents.c.n),
).returning(messages.c.id)

_locked_mailboxes = (select(mailboxes.c.id).where(mailboxes.c.id == any_(bindparam("mailbox_ids", type_=_ids)))
                     .order_by(mailboxes.c.id).with_for_update().cte("locked_mailboxes").prefix_with("MATERIALIZED"))
_uid_counts = func.unnest(bindparam("mailbox_ids", type_=_ids), bindparam("counts", type_=_ids)).table_valued(
    "id", "n").render_derived()
ALLOCATE_UIDS_PG = (update(mailboxes).where(mailboxes.c.id == _locked_mailboxes.c.id,
                                            _uid_counts.c.id == _locked_mailboxes.c.id)
                    .values(uidnext=mailboxes.c.uidnext + _uid_counts.c.n,
                            highest_modseq=mailboxes.c.highest_modseq + 1)
                    .returning(mailboxes.c.id, mailboxes.c.uidnext, mailboxes.c.highest_modseq))

_new_entries = func.unnest(
    bindparam("mailbox_id", type_=_ids), bindparam("uid", type_=ARRAY(BigInteger)),
    bindparam("message_id", type_=_ids), bindparam("internaldate", type_=ARRAY(DateTime(timezone=True))),
    bindparam("modseq", type_=ARRAY(BigInteger)), bindparam("size", type_=ARRAY(BigInteger)),
).table_valued("mailbox_id", "uid", "message_id", "internaldate", "modseq", "size").render_derived()
INSERT_ENTRIES_PG = insert(entries).from_select(
    ["mailbox_id", "uid", "message_id", "flags", "keywords", "internaldate", "modseq", "size"],
    select(_new_entries.c.mailbox_id, _new_entries.c.uid, _new_entries.c.message_id, literal(0), literal(""),
           _new_entries.c.internaldate, _new_entries.c.modseq, _new_entries.c.size))

_locked_accounts = (select(accounts.c.id).where(accounts.c.id == any_(bindparam("account_ids", type_=_ids)))
                    .order_by(accounts.c.id).with_for_update().cte("locked_accounts").prefix_with("MATERIALIZED"))
_deltas = func.unnest(bindparam("account_ids", type_=_ids), bindparam("deltas", type_=ARRAY(BigInteger))
                      ).table_valued("id", "delta").render_derived()
ADD_USAGES_PG = (update(accounts).where(accounts.c.id == _locked_accounts.c.id, _deltas.c.id == _locked_accounts.c.id)
                 .values(used_bytes=accounts.c.used_bytes + _deltas.c.delta))


@functools.cache
def fetch_entries(with_cache: bool, with_raw: bool, contiguous: bool) -> Select:
    """FETCH's read: entry columns, header size, optionally the parse cache and the bytes, for
    a UID range (`lo`..`hi`) or a list (`uids`), in UID order. One statement per variant, built once."""
    columns = [*ENTRY_META_COLUMNS, messages.c.header_size]
    if with_cache:
        columns.append(messages.c.parse_cache)
    if with_raw:
        columns.append(messages.c.raw)
    query = (select(*columns).join(messages, messages.c.id == entries.c.message_id)
             .where(entries.c.mailbox_id == bindparam("mailbox_id")))
    if contiguous:
        query = query.where(entries.c.uid.between(bindparam("lo"), bindparam("hi")))
    else:
        query = query.where(entries.c.uid.in_(bindparam("uids", expanding=True)))
    return query.order_by(entries.c.uid)


MAILBOXES_OF_ACCOUNT = FastStatement(select(*_MAILBOX_COLUMNS).where(mailboxes.c.account_id == bindparam("account_id"))
                                     .order_by(mailboxes.c.name))

SUBSCRIBED_NAMES = FastStatement(select(subscriptions.c.name)
                                 .where(subscriptions.c.account_id == bindparam("account_id")))

# STATUS counts (RFC 3501 §6.3.10): messages, unseen, recent, bytes.
MAILBOX_COUNTS = FastStatement(select(
    func.count(),
    func.coalesce(func.sum(case((entries.c.flags.op("&")(bindparam("seen_flag")) == 0, 1), else_=0)), 0),
    func.coalesce(func.sum(case((entries.c.uid >= bindparam("first_recent_uid"), 1), else_=0)), 0),
    func.coalesce(func.sum(entries.c.size), 0),
).where(entries.c.mailbox_id == bindparam("mailbox_id")))


# ---- imap: the write side of EXPUNGE and STORE (the bulk of imaptest's writes)
tombstones = ExpungeRow.__table__
outbound = OutboundRow.__table__

DELETE_ENTRIES_BY_UIDS = FastStatement(delete(entries).where(entries.c.mailbox_id == bindparam("mailbox_id"),
                                                            entries.c.uid.in_(bindparam("uids", expanding=True))))

INSERT_TOMBSTONE = insert(tombstones)

# Contents no mailbox entry or queued message refers to any more.
DELETE_UNREFERENCED_CONTENTS = FastStatement(delete(messages).where(
    messages.c.id.in_(bindparam("ids", expanding=True)),
    ~exists().where(entries.c.message_id == messages.c.id),
    ~exists().where(outbound.c.message_id == messages.c.id)))

_FLAG_ROWS = select(*ENTRY_FLAG_COLUMNS).where(entries.c.mailbox_id == bindparam("mailbox_id"))
ENTRY_FLAGS_BETWEEN = FastStatement(_FLAG_ROWS.where(entries.c.uid.between(bindparam("lo"), bindparam("hi"))))
ENTRY_FLAGS_IN = FastStatement(_FLAG_ROWS.where(entries.c.uid.in_(bindparam("uids", expanding=True))))
