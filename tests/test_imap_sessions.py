"""Two sessions on one mailbox (RFC 3501 §5.2, §7.4.1): flags, expunges and new mail reach the
other session with correct sequence numbers, and never as EXPUNGE during FETCH/STORE/SEARCH."""
from __future__ import annotations

import re

from .test_imap_support import Raw, deliver, message


def _two(server, user, count=3):
    for i in range(count):
        deliver(server, user, message(f"m{i}"))
    a, b = Raw(server), Raw(server)
    for raw in (a, b):
        raw.login(user)
        raw.ok("SELECT INBOX")
    return a, b


def test_flag_change_seen_by_other_session(server, user):
    a, b = _two(server, user)
    a.ok("STORE 2 +FLAGS (\\Flagged)")
    untagged = b.ok("NOOP")
    assert any(re.match(rb"\* 2 FETCH \(FLAGS \(.*\\Flagged.*\)\)", line) for line in untagged), untagged
    # Reported once only.
    assert not any(b"FETCH" in line for line in b.ok("NOOP"))
    a.close(), b.close()


def test_expunge_seen_with_correct_sequence_numbers(server, user):
    a, b = _two(server, user, 4)
    a.ok("STORE 2,3 +FLAGS.SILENT (\\Deleted)")
    assert a.ok("EXPUNGE")[:2] == [b"* 2 EXPUNGE", b"* 2 EXPUNGE"]
    untagged = b.ok("NOOP")
    assert [line for line in untagged if line.endswith(b"EXPUNGE")] == [b"* 2 EXPUNGE", b"* 2 EXPUNGE"]
    fetched = b.ok("FETCH 1:* UID")
    assert [re.search(rb"UID (\d+)", line).group(1) for line in fetched] == [b"1", b"4"]
    a.close(), b.close()


def test_no_expunge_during_fetch_store_search(server, user):
    a, b = _two(server, user, 3)
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    for command in ("FETCH 1:* FLAGS", "STORE 3 +FLAGS (x)", "SEARCH ALL"):
        untagged = b.ok(command)
        assert not any(line.endswith(b"EXPUNGE") for line in untagged), (command, untagged)
    # Sequence numbers are still those of b's view: 3 messages.
    assert b.ok("SEARCH ALL")[0] == b"* SEARCH 1 2 3"
    untagged = b.ok("NOOP")
    assert b"* 1 EXPUNGE" in untagged
    assert b.ok("SEARCH ALL")[0] == b"* SEARCH 1 2"
    a.close(), b.close()


def test_uid_fetch_may_report_expunge(server, user):
    a, b = _two(server, user, 2)
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    untagged = b.ok("UID FETCH 1:* FLAGS")
    assert b"* 1 EXPUNGE" in untagged
    a.close(), b.close()


def test_new_mail_reported_as_exists(server, user):
    a, b = _two(server, user, 1)
    a.ok('APPEND INBOX {%d+}\r\n%s' % (len(message("new")), message("new").decode()))
    untagged = b.ok("NOOP")
    assert b"* 2 EXISTS" in untagged
    deliver(server, user, message("delivered"))
    assert b"* 3 EXISTS" in b.ok("CHECK")
    a.close(), b.close()


def test_recent_claimed_by_one_session_only(server, user):
    deliver(server, user, message("r1"))
    a, b = Raw(server), Raw(server)
    a.login(user), b.login(user)
    assert b"* 1 RECENT" in a.ok("SELECT INBOX")
    assert b"* 0 RECENT" in b.ok("SELECT INBOX")
    assert any(b"\\Recent" in line for line in a.ok("FETCH 1 FLAGS"))
    assert not any(b"\\Recent" in line for line in b.ok("FETCH 1 FLAGS"))
    assert a.ok("SEARCH RECENT")[0] == b"* SEARCH 1"
    # EXAMINE does not claim \Recent.
    deliver(server, user, message("r2"))
    c = Raw(server)
    c.login(user)
    assert b"* 1 RECENT" in c.ok("EXAMINE INBOX")
    d = Raw(server)
    d.login(user)
    assert b"* 1 RECENT" in d.ok("SELECT INBOX")
    # A message arriving while a and d are selected is \Recent in exactly one of them.
    deliver(server, user, message("r3"))
    counts = []
    for raw in (a, d):
        untagged = raw.ok("NOOP")
        assert b"* 3 EXISTS" in untagged
        counts.append(len([l for l in raw.ok("SEARCH RECENT UID 3")[0].split()[2:]]))
    assert sorted(counts) == [0, 1]
    for raw in (a, b, c, d):
        raw.close()


def test_recent_split_among_many_sessions(server, user):
    """Every new message is \\Recent in exactly one of several selected sessions (the claims of
    one process are settled in memory; the losers make no write)."""
    sessions = [Raw(server) for _ in range(4)]
    for raw in sessions:
        raw.login(user)
        raw.ok("SELECT INBOX")
    for n in range(6):
        deliver(server, user, message(f"many{n}"))
    claimed: list[int] = []
    for raw in sessions:
        raw.ok("NOOP")
        claimed += [int(uid) for uid in raw.ok("UID SEARCH RECENT")[0].split()[2:]]
    assert sorted(claimed) == list(range(1, 7))
    for raw in sessions:
        raw.close()


def test_pop3_style_deletion_seen_as_expunge(server, user):
    from storage.types import Pop3DeletePolicy

    deliver(server, user, message("p1"))
    deliver(server, user, message("p2"))
    raw = Raw(server)
    raw.login(user)
    raw.ok("SELECT INBOX")
    server.admin.run(server.admin.store.pop3_apply_deletes(user.id, [1], Pop3DeletePolicy.EXPUNGE))
    assert b"* 1 EXPUNGE" in raw.ok("NOOP")
    raw.close()


def test_deleted_selected_mailbox_ends_session(server, user):
    a, b = Raw(server), Raw(server)
    a.login(user), b.login(user)
    a.ok("CREATE Doomed")
    b.ok("SELECT Doomed")
    a.ok("DELETE Doomed")
    untagged, tagged = b.cmd("NOOP")
    assert any(line.startswith(b"* BYE") for line in untagged + [tagged]) or tagged.startswith(b"OK")
    a.close(), b.close()
