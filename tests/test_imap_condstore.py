"""CONDSTORE and QRESYNC (RFC 7162): HIGHESTMODSEQ, FETCH MODSEQ / CHANGEDSINCE, STORE UNCHANGEDSINCE,
SEARCH MODSEQ, ENABLE QRESYNC with SELECT ... QRESYNC, VANISHED (EARLIER) and live VANISHED."""
from __future__ import annotations

import re

from .test_imap_support import Raw, deliver, message


def _modseq(line: bytes) -> int:
    return int(re.search(rb"MODSEQ \((\d+)\)", line).group(1))


def test_condstore_fetch_store_search(server, user):
    for i in range(3):
        deliver(server, user, message(f"cs{i}"))
    raw = Raw(server)
    raw.login(user)
    lines = raw.ok("SELECT INBOX (CONDSTORE)")
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(lines)).group(1))
    fetched = raw.ok("FETCH 1:* (FLAGS MODSEQ)")
    assert len(fetched) == 3 and all(b"MODSEQ (" in line for line in fetched)
    stored = raw.ok("STORE 2 +FLAGS (\\Seen)")
    new_modseq = _modseq(stored[0])
    assert new_modseq > highest
    assert raw.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})") == [
        b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))" % new_modseq]
    assert raw.ok(f"SEARCH MODSEQ {new_modseq}") == [b"* SEARCH 2 (MODSEQ %d)" % new_modseq]
    # UNCHANGEDSINCE older than message 2's modseq: 2 fails, 1 succeeds.
    untagged, tagged = raw.cmd(f"STORE 1:2 (UNCHANGEDSINCE {highest}) +FLAGS (\\Flagged)")
    assert tagged.startswith(b"OK [MODIFIED 2]"), tagged
    assert len(untagged) == 1 and untagged[0].startswith(b"* 1 FETCH")
    untagged, tagged = raw.cmd(f"UID STORE 1:3 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Flagged)")
    assert tagged.startswith(b"OK [MODIFIED 1:3]"), tagged
    status = raw.ok("STATUS INBOX (HIGHESTMODSEQ)")[0]
    assert int(re.search(rb"HIGHESTMODSEQ (\d+)", status).group(1)) >= new_modseq
    raw.close()


def test_qresync_select_and_vanished(server, user):
    for i in range(4):
        deliver(server, user, message(f"q{i}"))
    raw = Raw(server)
    raw.login(user)
    _, tagged = raw.cmd("SELECT INBOX (QRESYNC (1 1))")
    assert tagged.startswith(b"BAD")  # not enabled yet
    assert raw.ok("ENABLE QRESYNC") == [b"* ENABLED QRESYNC"]
    lines = raw.ok("SELECT INBOX")
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(lines)).group(1))
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(lines)).group(1))
    other = Raw(server)
    other.login(user)
    other.ok("SELECT INBOX")
    other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    other.ok("STORE 2 +FLAGS.SILENT (\\Answered)")
    # Live: VANISHED instead of EXPUNGE, FETCH with UID and MODSEQ.
    untagged = raw.ok("NOOP")
    assert b"* VANISHED 1" in untagged
    assert any(re.match(rb"\* 2 FETCH \(FLAGS \(\\Answered[^)]*\) UID 3 MODSEQ \(\d+\)\)", l) for l in untagged), \
        untagged
    # Resync from the old state.
    raw.ok("UNSELECT")
    lines = raw.ok(f"SELECT INBOX (QRESYNC ({uidvalidity} {highest} 1:4))")
    assert b"* VANISHED (EARLIER) 1" in lines
    assert any(re.match(rb"\* 2 FETCH \(UID 3 FLAGS \(\\Answered[^)]*\) MODSEQ", l) for l in lines), lines
    fetched = raw.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {highest} VANISHED)")
    assert fetched[0] == b"* VANISHED (EARLIER) 1"
    raw.close(), other.close()
