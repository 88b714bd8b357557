"""The per-session mailbox view (server/imap/mailbox.py) on its own: the RFC 3501 §7.4.1 and
§7.3.2 bookkeeping that the protocol tests reach only through races."""
from __future__ import annotations

from array import array

from server.imap.mailbox import MailboxView
from storage.changes import MessageAdded, MessagesExpunged
from storage.types import MailboxIndex, MailboxInfo


def _view(uids: list[int]) -> MailboxView:
    info = MailboxInfo(id=1, account_id=1, name="INBOX", uidvalidity=7, uidnext=max(uids, default=0) + 1,
                       highest_modseq=1, special_use=None, subscribed=True)
    index = MailboxIndex(info, array("q", uids), array("q", [0] * len(uids)), array("q", [1] * len(uids)),
                         {}, frozenset(), ())
    return MailboxView(index, readonly=False)


def _flush(view: MailboxView, *, allow_expunge: bool = True) -> list[bytes]:
    return view.flush(allow_expunge=allow_expunge, condstore=False, qresync=False, flags_line=lambda: b"* FLAGS ()")


def test_recent_never_counts_a_message_expunged_before_it_was_announced():
    view = _view([1, 2])
    view.apply(MessageAdded(1, 3, 2, 0, ()))
    view.add_recent([3])  # this session won the \Recent claim for UID 3 ...
    view.apply(MessagesExpunged(1, (3,), 3))  # ... which another session expunged before we said EXISTS
    lines = _flush(view, allow_expunge=False)
    assert b"* 3 EXISTS" not in lines
    assert not any(line.endswith(b" RECENT") and line != b"* 0 RECENT" for line in lines), lines
    assert view.exists == 2 and not view.recent


def test_recent_follows_exists_for_announced_messages():
    view = _view([1])
    view.apply(MessageAdded(1, 2, 2, 0, ()))
    view.add_recent([2])
    assert _flush(view) == [b"* 2 EXISTS", b"* 1 RECENT"]
