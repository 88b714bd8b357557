"""STORE (RFC 3501 §6.4.6): +/-FLAGS, .SILENT, keywords, UID STORE; read-only mailboxes refuse it."""
from __future__ import annotations

import re

from .test_imap_support import Raw, deliver, message, selected_inbox


def _selected(server, user, count=2):
    return selected_inbox(server, user, count, "s")


def test_add_remove_replace_and_keywords(server, user):
    raw = _selected(server, user)
    untagged = raw.ok("STORE 1 +FLAGS (\\Seen $Label1)")
    # A new keyword extends FLAGS before any FETCH shows it (RFC 3501 §7.2.6).
    assert untagged[0] == b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1)"
    assert untagged[1] == b"* 1 FETCH (FLAGS (\\Seen $Label1 \\Recent))"
    assert raw.ok("STORE 1 -FLAGS (\\Seen)") == [b"* 1 FETCH (FLAGS ($Label1 \\Recent))"]
    assert raw.ok("STORE 1:2 FLAGS (\\Answered)") == [b"* 1 FETCH (FLAGS (\\Answered \\Recent))",
                                                        b"* 2 FETCH (FLAGS (\\Answered \\Recent))"]
    assert raw.ok("STORE 2 +FLAGS.SILENT (\\Flagged)") == []
    assert raw.ok("UID STORE 2 +FLAGS \\Draft") == [b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Flagged \\Draft \\Recent))"]
    raw.close()


def test_store_errors(server, user):
    raw = _selected(server, user)
    for command in ("STORE 1 +FLAGS (\\Bogus)", "STORE 1 FLIPFLAGS (\\Seen)", "STORE 9 +FLAGS (\\Seen)",
                    "STORE 1 +FLAGS (\\Seen", "STORE", "STORE 1 +FLAGS (a]b)"):
        _, tagged = raw.cmd(command)
        assert tagged.startswith(b"BAD"), (command, tagged)
    raw.ok("EXAMINE INBOX")
    _, tagged = raw.cmd("STORE 1 +FLAGS (\\Seen)")
    assert tagged.startswith(b"NO")
    raw.close()


def test_uid_store_missing_uids_is_ok(server, user):
    raw = _selected(server, user)
    assert raw.ok("UID STORE 100:200 +FLAGS (\\Seen)") == []
    raw.close()


def test_flags_from_the_select_index_with_later_changes(server, user):
    """The view answers FETCH (FLAGS) and SEARCH from the SELECT's arrays with changes on top:
    keywords set before SELECT, this session's STORE, another session's STORE, an expunge, a delivery."""
    for i in range(5):
        deliver(server, user, message(f"ix{i}"))
    setup = Raw(server)
    setup.login(user)
    setup.ok("SELECT INBOX")
    setup.ok("STORE 2 +FLAGS.SILENT ($Old \\Flagged)")
    setup.ok("STORE 4 +FLAGS.SILENT (\\Deleted)")
    a = Raw(server)
    a.login(user)
    a.ok("SELECT INBOX")
    setup.ok("EXPUNGE")
    a.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
    # The expunge is still pending here (never during FETCH): the whole SELECT run, one entry changed.
    early = [l for l in a.ok("FETCH 1:* (UID FLAGS)") if b"FETCH" in l]
    assert len(early) == 5 and b"\\Seen" in early[0] and b"$Old" in early[1] and b"\\Deleted" in early[3]
    setup.ok("STORE 3 +FLAGS.SILENT ($New)")
    deliver(server, user, message("ix5"))
    a.ok("NOOP")
    lines = [l for l in a.ok("FETCH 1:* (UID FLAGS)") if b"FETCH" in l]
    flags = {int(re.search(rb"UID (\d+)", l).group(1)): re.search(rb"FLAGS \(([^)]*)\)", l).group(1).split()
             for l in lines}
    assert set(flags) == {1, 2, 3, 5, 6}
    assert b"\\Seen" in flags[1] and b"$Old" in flags[2] and b"\\Flagged" in flags[2]
    assert b"$New" in flags[3] and b"\\Seen" not in flags[5] and b"\\Seen" not in flags[6]
    assert a.ok("UID SEARCH KEYWORD $New") == [b"* SEARCH 3"]
    assert a.ok("UID SEARCH UNSEEN") == [b"* SEARCH 2 3 5 6"]
    assert a.ok("UID SEARCH FLAGGED KEYWORD $Old") == [b"* SEARCH 2"]
    a.close()
    setup.close()
