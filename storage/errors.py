"""Errors the store raises; protocol code renders them as 5xx / -ERR / NO."""
from __future__ import annotations


class StoreError(Exception):
    """Base class: a request the store refuses, with a message fit for a client."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class InvalidName(StoreError):
    """A mailbox name or address that is malformed or tries to leave the account."""


class NoSuchMailbox(NotFound):
    pass


class MailboxExists(AlreadyExists):
    pass


class MailboxNotEmpty(StoreError):
    """DELETE of a mailbox that still has children (we keep no \\Noselect placeholders)."""


class Forbidden(StoreError):
    """E.g. deleting INBOX, or renaming a mailbox into its own child."""


class OverQuota(StoreError):
    """RFC 9208 / RFC 5321 552 5.2.2: the account's quota would be exceeded."""


class WeakPassword(StoreError):
    pass


class SchemaOutOfDate(StoreError):
    pass
