"""Bad input gets BAD or NO and the session stays usable: unknown commands, broken literals,
huge literal announcements, bad sequence sets, unbalanced parentheses, bad tags."""
from __future__ import annotations

from .test_imap_support import Raw, deliver, message


def _logged_in(server, user):
    raw = Raw(server)
    raw.login(user)
    return raw


def test_unknown_and_malformed_commands(server, user):
    raw = _logged_in(server, user)
    for command in ("FROBNICATE", "SELECT", "SELECT INBOX EXTRA (", "LIST (", 'LIST "" "*" RETURN', "CREATE",
                    'LOGIN "unterminated', "UID", "UID FROB 1", "CAPABILITY extra", "STATUS INBOX MESSAGES",
                    "ENABLE", "ID (\"odd\")", 'SELECT "a\\x"'):
        _, tagged = raw.cmd(command)
        assert tagged.startswith(b"BAD"), (command, tagged)
    raw.send(b"\r\n")
    assert raw.line().startswith(b"* BAD")
    raw.send(b"+tag NOOP\r\n")
    assert raw.line().startswith(b"* BAD")
    raw.ok("NOOP")
    raw.close()


def test_bad_sequence_sets(server, user):
    deliver(server, user, message("seq"))
    raw = _logged_in(server, user)
    raw.ok("SELECT INBOX")
    for seqset in ("0", "1:0", "-1", "1,,2", "1:", ":1", "abc", "1:*:2", "4294967296"):
        _, tagged = raw.cmd(f"FETCH {seqset} FLAGS")
        assert tagged.startswith(b"BAD"), (seqset, tagged)
    raw.ok("FETCH 1:* FLAGS")
    raw.ok("UID FETCH 1:4294967295 FLAGS")
    raw.close()


def test_literal_announced_beyond_append_limit(start_server):
    srv = start_server("sqlite", CASELLA_IMAP__MAX_APPEND_SIZE="2048")
    user = srv.new_user()
    raw = Raw(srv)
    raw.login(user)
    assert b"APPENDLIMIT=2048" in raw.ok("CAPABILITY")[0]
    # Synchronizing: refused before the client sends a byte.
    raw.send(b"a1 APPEND INBOX {999999999}\r\n")
    assert raw.line().startswith(b"a1 NO [TOOBIG]")
    # Non-synchronizing: the bytes are swallowed, then refused.
    raw.send(b"a2 APPEND INBOX {3000+}\r\n" + b"x" * 3000 + b"\r\n")
    assert raw.line().startswith(b"a2 NO [TOOBIG]")
    data = message("fits")
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
    raw.close()


def test_broken_and_oversized_literals_outside_append(server, user):
    raw = _logged_in(server, user)
    raw.send(b"l1 LOGIN {99999999}\r\n")
    assert raw.line().startswith(b"l1 BAD")
    raw.send(b"l2 SELECT {5}\r\n")
    assert raw.line().startswith(b"+")
    raw.send(b"INBOX EXTRA\r\n")
    assert raw.line().startswith(b"l2 BAD")
    raw.ok("NOOP")
    raw.close()


def test_quoted_string_escapes(server, user):
    raw = _logged_in(server, user)
    raw.ok('CREATE "with \\"quote\\" and \\\\ backslash"')
    lines = raw.ok('LIST "" "with*"')
    assert lines == [b'* LIST (\\HasNoChildren) "/" "with \\"quote\\" and \\\\ backslash"']
    raw.close()


def test_pipelined_commands_answered_in_order(server, user):
    raw = _logged_in(server, user)
    raw.send(b"p1 NOOP\r\np2 SELECT INBOX\r\np3 FETCH 1:* FLAGS\r\np4 NOOP\r\n")
    for tag in (b"p1", b"p2", b"p3", b"p4"):
        _, tagged = raw.until_tagged(tag)
        assert tagged.startswith(b"OK"), (tag, tagged)
    raw.close()


def test_line_too_long_says_bye(start_server):
    srv = start_server("sqlite", CASELLA_IMAP__MAX_LINE_LENGTH="1024")
    raw = Raw(srv)
    raw.send(b"x1 NOOP " + b"a" * 5000 + b"\r\n")
    assert raw.line().startswith(b"* BYE")
    raw.close()


def test_pipelined_input_beyond_the_backlog_is_all_answered(server, user):
    """More pipelined input than the server holds while a command runs (1 MB): it stops reading
    the socket until it catches up, and every command is still answered, in order."""
    raw = _logged_in(server, user)
    value = "v" * 50_000
    commands = 30  # 1.5 MB in one burst
    raw.send(b"".join(b'p%d ID ("x" "%s")\r\n' % (n, value.encode()) for n in range(commands)))
    for n in range(commands):
        while True:
            line = raw.line()
            if line.startswith(b"p%d " % n):
                assert line.startswith(b"p%d OK" % n), line
                break
    raw.ok("NOOP")
    raw.close()
