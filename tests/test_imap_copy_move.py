"""COPY (RFC 3501 §6.4.7), MOVE (RFC 6851), UIDPLUS (RFC 4315: APPENDUID, COPYUID, UID EXPUNGE)."""
from __future__ import annotations

import re

from .test_imap_support import Raw, message, selected_inbox


def _selected(server, user, count=3):
    return selected_inbox(server, user, count, "c")


def test_copy_with_copyuid_keeps_flags(server, user):
    raw = _selected(server, user)
    raw.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
    untagged, tagged = raw.cmd("COPY 2:3 Archive")
    assert re.match(rb"OK \[COPYUID \d+ 2:3 1:2\]", tagged), tagged
    status = raw.ok("STATUS Archive (MESSAGES)")
    assert b"MESSAGES 2" in status[0]
    raw.ok("EXAMINE Archive")
    assert b"\\Flagged" in raw.ok("FETCH 1 FLAGS")[0]
    raw.close()


def test_copy_to_missing_mailbox_trycreate(server, user):
    raw = _selected(server, user)
    _, tagged = raw.cmd("COPY 1 Nowhere")
    assert tagged.startswith(b"NO [TRYCREATE]")
    _, tagged = raw.cmd("MOVE 1 Nowhere")
    assert tagged.startswith(b"NO [TRYCREATE]")
    raw.close()


def test_move_reports_copyuid_then_expunges(server, user):
    raw = _selected(server, user)
    untagged, tagged = raw.cmd("MOVE 1:2 Trash")
    assert tagged.startswith(b"OK")
    assert re.match(rb"\* OK \[COPYUID \d+ 1:2 1:2\]", untagged[0]), untagged
    assert untagged[1:] == [b"* 1 EXPUNGE", b"* 1 EXPUNGE"]
    untagged, tagged = raw.cmd("UID MOVE 3 Trash")
    assert untagged[1:] == [b"* 1 EXPUNGE"]
    assert b"* 0 EXISTS" in raw.ok("SELECT INBOX")
    raw.close()


def test_append_appenduid_and_uid_expunge(server, user):
    raw = Raw(server)
    raw.login(user)
    data = message("appended")
    raw.send(b"a1 APPEND INBOX (\\Seen) \" 7-Feb-1994 21:52:25 -0800\" {%d}\r\n" % len(data))
    assert raw.line().startswith(b"+")
    raw.send(data + b"\r\n")
    _, tagged = raw.until_tagged(b"a1")
    assert re.match(rb"OK \[APPENDUID \d+ 1\]", tagged), tagged
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
    raw.ok("SELECT INBOX")
    fetched = raw.ok("FETCH 1 (FLAGS INTERNALDATE)")[0]
    assert b'INTERNALDATE "08-Feb-1994 05:52:25 +0000"' in fetched and b"\\Seen" in fetched
    raw.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert raw.ok("UID EXPUNGE 2") == [b"* 2 EXPUNGE"]
    assert raw.ok("EXPUNGE") == [b"* 1 EXPUNGE"]
    raw.close()


def test_append_errors(server, user):
    raw = Raw(server)
    raw.login(user)
    data = message("x")
    _, tagged = raw.cmd(b"APPEND Nowhere {%d+}\r\n" % len(data) + data)
    assert tagged.startswith(b"NO [TRYCREATE]")
    _, tagged = raw.cmd(b"APPEND INBOX (\\Bogus) {%d+}\r\n" % len(data) + data)
    assert tagged.startswith(b"BAD")
    _, tagged = raw.cmd(b'APPEND INBOX "not a date" {%d+}\r\n' % len(data) + data)
    assert tagged.startswith(b"BAD")
    _, tagged = raw.cmd(b"APPEND INBOX {0+}\r\n")
    assert tagged.startswith(b"NO")
    raw.ok("NOOP")
    raw.close()


def test_close_expunges_and_unselect_does_not(server, user):
    raw = _selected(server, user, 2)
    raw.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    raw.ok("UNSELECT")
    assert b"* 2 EXISTS" in raw.ok("SELECT INBOX")
    assert raw.ok("CLOSE") == []
    assert b"* 1 EXISTS" in raw.ok("EXAMINE INBOX")
    _, tagged = raw.cmd("EXPUNGE")
    assert tagged.startswith(b"NO")
    raw.close()
