"""IDLE (RFC 2177): deliveries, other sessions' changes and expunges are pushed at once."""
from __future__ import annotations

import time

from .test_imap_support import Raw, deliver, message, smtp_deliver


def _idle(server, user):
    raw = Raw(server)
    raw.login(user)
    raw.ok("SELECT INBOX")
    raw.send(b"i1 IDLE\r\n")
    assert raw.line().startswith(b"+")
    return raw


def test_smtp_delivery_pushed_within_one_second(server, user):
    raw = _idle(server, user)
    start = time.monotonic()
    smtp_deliver(server, user, message("pushed"))
    line = raw.line(timeout=1.0)
    assert line == b"* 1 EXISTS"
    assert time.monotonic() - start < 1.0
    assert raw.line(timeout=1.0) == b"* 1 RECENT"
    raw.send(b"DONE\r\n")
    _, tagged = raw.until_tagged(b"i1")
    assert tagged.startswith(b"OK")
    raw.ok("NOOP")
    raw.close()


def test_admin_delivery_seen_at_idle_start(server, user):
    raw = Raw(server)
    raw.login(user)
    raw.ok("SELECT INBOX")
    deliver(server, user, message("from another process"))
    raw.send(b"i1 IDLE\r\n")
    lines = [raw.line(), raw.line(), raw.line()]
    assert lines == [b"* 1 EXISTS", b"* 1 RECENT", b"+ idling"]
    raw.send(b"DONE\r\n")
    assert raw.until_tagged(b"i1")[1].startswith(b"OK")
    raw.close()


def test_other_session_flags_and_expunge_pushed(server, user):
    deliver(server, user, message("a"))
    deliver(server, user, message("b"))
    raw = _idle(server, user)
    other = Raw(server)
    other.login(user)
    other.ok("SELECT INBOX")
    other.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert raw.line(timeout=1.0).startswith(b"* 1 FETCH (FLAGS (\\Seen")
    other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    raw.line(timeout=1.0)
    other.ok("EXPUNGE")
    assert raw.line(timeout=1.0) == b"* 1 EXPUNGE"
    raw.send(b"DONE\r\n")
    assert raw.until_tagged(b"i1")[1].startswith(b"OK")
    raw.close(), other.close()


def test_idle_quiet_without_changes_and_bad_continuation(server, user):
    raw = _idle(server, user)
    try:
        raw.line(timeout=1.5)
        raise AssertionError("unexpected chatter during IDLE")
    except TimeoutError:
        pass
    raw.send(b"NOTDONE\r\n")
    assert raw.line().startswith(b"i1 BAD")
    raw.ok("NOOP")
    raw.close()


def test_idle_in_authenticated_state(server, user):
    raw = Raw(server)
    raw.login(user)
    raw.send(b"i1 IDLE\r\n")
    assert raw.line().startswith(b"+")
    raw.send(b"DONE\r\n")
    assert raw.until_tagged(b"i1")[1].startswith(b"OK")
    raw.close()


def test_pop3_deletion_pushed_as_expunge(server, user):
    import poplib

    deliver(server, user, message("pop me"))
    deliver(server, user, message("keep me"))
    raw = _idle(server, user)
    pop = poplib.POP3(server.host, server.port("pop3"), timeout=10)
    pop.user(user.address)
    pop.pass_(user.password)
    pop.dele(1)
    pop.quit()
    assert raw.line(timeout=1.0) == b"* 1 EXPUNGE"
    raw.send(b"DONE\r\n")
    assert raw.until_tagged(b"i1")[1].startswith(b"OK")
    assert raw.ok("FETCH 1:* UID") == [b"* 1 FETCH (UID 2)"]
    raw.close()


def test_shutdown_says_bye_to_idle_sessions(start_server):
    srv = start_server("sqlite")
    user = srv.new_user()
    raw = _idle(srv, user)
    assert srv.daemon.stop() == 0
    assert raw.line(timeout=5).startswith(b"* BYE [UNAVAILABLE]")
    raw.close()


def test_delivery_by_another_node_pushed_on_postgres(server, user):
    """A second casella process on the same PostgreSQL database (LISTEN/NOTIFY) reaches IDLE at once."""
    import pytest

    if server.backend != "postgres":
        pytest.skip("cross-process events are a PostgreSQL feature; SQLite is one node (NOOP/IDLE resync covers it)")
    from storage import MailStore

    other_node = server.admin.run(MailStore.open(server.daemon.database_url, cross_process_events=True))
    try:
        raw = _idle(server, user)
        start = time.monotonic()
        server.admin.run(other_node.deliver(message("from node two"), [user.id]))
        assert raw.line(timeout=1.0) == b"* 1 EXISTS"
        assert time.monotonic() - start < 1.0
        raw.send(b"DONE\r\n")
        assert raw.until_tagged(b"i1")[1].startswith(b"OK")
        raw.close()
    finally:
        server.admin.run(other_node.close())
