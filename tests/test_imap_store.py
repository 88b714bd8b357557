"""STORE (RFC 3501 §6.4.6): +/-FLAGS, .SILENT, keywords, UID STORE; read-only mailboxes refuse it."""
from __future__ import annotations

from .test_imap_support import Raw, deliver, message


def _selected(server, user, count=2):
    for i in range(count):
        deliver(server, user, message(f"s{i}"))
    raw = Raw(server)
    raw.login(user)
    raw.ok("SELECT INBOX")
    return raw


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
