"""Domains, accounts, aliases, authentication and recipient resolution through MailStore."""
from __future__ import annotations

import bcrypt
import pytest
from argon2 import PasswordHasher
from passlib.hash import sha512_crypt

from storage import (
    AlreadyExists,
    Forbidden,
    InvalidName,
    MailboxExists,
    MailboxNotEmpty,
    NotFound,
    SpecialUse,
    StoreError,
    WeakPassword,
)

from .test_store_uids import RAW, make_account


async def test_account_lifecycle_and_errors(store):
    await store.add_domain("Example.TEST")
    with pytest.raises(AlreadyExists):
        await store.add_domain("example.test")
    with pytest.raises(InvalidName):
        await store.add_domain("bad domain")
    with pytest.raises(NotFound):
        await store.add_account("x@unknown.test", "long-enough-pw")
    with pytest.raises(WeakPassword):
        await store.add_account("x@example.test", "short")
    with pytest.raises(InvalidName):
        await store.add_account("not-an-address", "long-enough-pw")
    account = await store.add_account("Bob@Example.test", "long-enough-pw")
    assert account.address == "bob@example.test"
    with pytest.raises(AlreadyExists):
        await store.add_account("bob@example.test", "long-enough-pw")
    mailboxes = {m.name: m.special_use for m in await store.list_mailboxes(account.id)}
    assert mailboxes == {"INBOX": None, "Sent": SpecialUse.SENT, "Drafts": SpecialUse.DRAFTS,
                         "Trash": SpecialUse.TRASH, "Junk": SpecialUse.JUNK, "Archive": SpecialUse.ARCHIVE}
    with pytest.raises(Forbidden):
        await store.remove_domain("example.test")
    await store.remove_account("bob@example.test")
    assert await store.get_account("bob@example.test") is None
    await store.remove_domain("example.test")
    assert await store.list_domains() == ()


async def test_authentication_and_password_change(store):
    account = await make_account(store)
    assert (await store.authenticate("BOB@example.test", "correct-horse-battery")).id == account.id
    assert await store.authenticate("bob@example.test", "wrong") is None
    assert await store.authenticate("nobody@example.test", "correct-horse-battery") is None
    assert await store.authenticate("garbage", "x") is None
    await store.set_password("bob@example.test", "another-long-one")
    assert await store.authenticate("bob@example.test", "correct-horse-battery") is None
    assert await store.authenticate("bob@example.test", "another-long-one") is not None


@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID"])
async def test_imported_dovecot_hashes_log_in_and_are_rehashed(store, scheme):
    await store.add_domain("example.test")
    password = "imported-secret"
    if scheme == "SHA512-CRYPT":
        stored = "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash(password)
    elif scheme == "BLF-CRYPT":
        stored = "{BLF-CRYPT}" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode().replace("$2b$", "$2y$")
    else:
        stored = "{ARGON2ID}" + PasswordHasher().hash(password)
    await store.add_account("old@example.test", password_hash=stored)
    assert await store.authenticate("old@example.test", "wrong") is None
    assert await store.authenticate("old@example.test", password) is not None

    from sqlalchemy import select

    from storage.models import AccountRow

    rehashed = await store.db.read(lambda s: s.scalar(
        select(AccountRow.password_hash).where(AccountRow.address == "old@example.test")))
    assert rehashed.startswith("$argon2id$")
    assert await store.authenticate("old@example.test", password) is not None


async def test_unknown_hash_scheme_is_refused_at_import(store):
    await store.add_domain("example.test")
    with pytest.raises(StoreError):
        await store.add_account("old@example.test", password_hash="{PLAIN-MD5}abc")


async def test_recipient_resolution(store):
    bob = await make_account(store)
    carol = await make_account(store, "carol@example.test")
    await store.add_alias("sales@example.test", "bob@example.test")
    await store.add_alias("sales@example.test", "carol@example.test")
    await store.add_alias("fwd@example.test", "someone@remote.example")
    with pytest.raises(AlreadyExists):
        await store.add_alias("sales@example.test", "bob@example.test")

    assert (await store.resolve_recipient("bob@example.test")).account_ids == (bob.id,)
    assert (await store.resolve_recipient("Bob+News@Example.TEST")).account_ids == (bob.id,)
    assert set((await store.resolve_recipient("sales@example.test")).account_ids) == {bob.id, carol.id}
    assert await store.resolve_recipient("nobody@example.test") is None
    remote = await store.resolve_recipient("someone@remote.example")
    assert remote.local is False and remote.account_ids == ()
    assert await store.owned_addresses(bob.id) == {"bob@example.test", "sales@example.test"}

    await store.set_catchall("example.test", "carol@example.test")
    assert (await store.resolve_recipient("anything@example.test")).account_ids == (carol.id,)
    await store.set_catchall("example.test", None)
    assert await store.resolve_recipient("anything@example.test") is None
    assert await store.remove_alias("sales@example.test") == 2


async def test_mailbox_create_rename_delete(store):
    account = await make_account(store)
    with pytest.raises(MailboxExists):
        await store.create_mailbox(account.id, "inbox")
    created = await store.create_mailbox(account.id, "Work/2026/Q4/")
    assert created.name == "Work/2026/Q4"
    names = [m.name for m in await store.list_mailboxes(account.id)]
    assert {"Work", "Work/2026", "Work/2026/Q4"} <= set(names)
    await store.create_mailbox(account.id, "Caffè ☕")
    assert await store.get_mailbox(account.id, "Caffè ☕") is not None

    await store.rename_mailbox(account.id, "Work", "Job")
    names = {m.name for m in await store.list_mailboxes(account.id)}
    assert {"Job", "Job/2026", "Job/2026/Q4"} <= names and "Work" not in names
    with pytest.raises(Forbidden):
        await store.rename_mailbox(account.id, "Job", "Job/inner")
    with pytest.raises(MailboxExists):
        await store.rename_mailbox(account.id, "Job", "Sent")
    with pytest.raises(MailboxNotEmpty):
        await store.delete_mailbox(account.id, "Job")
    with pytest.raises(Forbidden):
        await store.delete_mailbox(account.id, "INBOX")
    await store.delete_mailbox(account.id, "Job/2026/Q4")
    await store.delete_mailbox(account.id, "Job/2026")
    await store.delete_mailbox(account.id, "Job")


async def test_renaming_inbox_moves_its_messages_and_leaves_it_empty(store):
    account = await make_account(store)
    await store.deliver(RAW, [account.id])
    await store.deliver(RAW, [account.id])
    await store.create_mailbox(account.id, "INBOX/Child")
    renamed = await store.rename_mailbox(account.id, "INBOX", "Old Mail")
    assert renamed.name == "Old Mail"
    old = await store.select(account.id, "Old Mail")
    assert [m.uid for m in old.messages] == [1, 2]
    inbox = await store.select(account.id, "INBOX")
    assert inbox.messages == () and inbox.mailbox.uidnext == 3
    assert await store.get_mailbox(account.id, "INBOX/Child") is not None
