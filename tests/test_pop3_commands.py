"""POP3 commands and their error paths over real sockets with poplib (RFC 1939, 2449, 2595, 5034)."""
from __future__ import annotations

import base64
import poplib
import socket
import ssl

import pytest

EXPECTED_CAPA = [b"TOP", b"UIDL", b"USER", b"SASL PLAIN", b"STLS", b"RESP-CODES", b"AUTH-RESP-CODE",
                 b"PIPELINING", b"IMPLEMENTATION casella"]


def message(n: int, body: bytes = b"") -> bytes:
    return (b"From: sender@example.test\r\nTo: rcpt@example.test\r\nSubject: message %d\r\n"
            b"Message-ID: <m%d@example.test>\r\n\r\n" % (n, n)) + (body or b"Body of message %d.\r\n" % n)


def deliver(server, user, raw: bytes) -> int:
    report = server.admin.run(server.admin.store.deliver(raw, [user.id]))
    return report.deliveries[0].uid


def connect(server, *, tls: str = "none") -> poplib.POP3:
    if tls == "implicit":
        return poplib.POP3_SSL(server.host, server.port("pop3s"), context=client_context(server), timeout=30)
    client = poplib.POP3(server.host, server.port("pop3"), timeout=30)
    if tls == "stls":
        client.stls(client_context(server))
    return client


def client_context(server) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=server.cert_file)
    context.check_hostname = False  # the dev certificate names localhost, we dial 127.0.0.1 (it has the IP too)
    return context


def login(server, user, **kwargs) -> poplib.POP3:
    client = connect(server, **kwargs)
    client.user(user.address)
    client.pass_(user.password)
    return client


def err(call, *args) -> bytes:
    with pytest.raises(poplib.error_proto) as info:
        call(*args)
    return info.value.args[0]


class RawClient:
    """A bare socket for what poplib cannot send (pipelining, malformed lines)."""

    def __init__(self, server, port_name: str = "pop3") -> None:
        self.sock = socket.create_connection((server.host, server.port(port_name)), timeout=30)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def multiline(self) -> list[bytes]:
        lines = []
        while (line := self.line()) != b".":
            lines.append(line)
        return lines

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def shared(server):
    """One account with messages 1-3 for the tests that read and never delete (account creation is slow)."""
    account = server.new_user()
    for n in (1, 2, 3):
        deliver(server, account, message(n))
    return account


# ---------------------------------------------------------------- greeting, CAPA, STLS


def test_greeting_and_capa_lists_exactly_what_is_supported(server):
    client = connect(server)
    assert client.getwelcome().startswith(b"+OK")
    response, lines, _ = client._longcmd("CAPA")
    assert lines == EXPECTED_CAPA  # RFC 2449: PIPELINING (not Twisted's PIPELINE), nothing we lack
    client.quit()


def test_capa_drops_stls_once_in_tls(server):
    client = connect(server, tls="stls")
    assert client._longcmd("CAPA")[1] == [c for c in EXPECTED_CAPA if c != b"STLS"]
    client.quit()
    client = connect(server, tls="implicit")
    assert b"STLS" not in client._longcmd("CAPA")[1]
    client.quit()


def test_stls_then_login_and_second_stls_refused(server, shared):
    client = connect(server, tls="stls")
    assert err(client._shortcmd, "STLS") == b"-ERR TLS is already active"
    client.user(shared.address)
    assert client.pass_(shared.password).startswith(b"+OK Logged in")
    client.quit()


def test_stls_on_pop3s_refused(server):
    client = connect(server, tls="implicit")
    assert err(client._shortcmd, "STLS") == b"-ERR TLS is already active"
    client.quit()


def test_stls_after_login_refused(server, shared):
    client = login(server, shared)
    assert err(client._shortcmd, "STLS") == b"-ERR Already logged in"
    client.quit()


def test_commands_pipelined_after_stls_are_discarded(server, shared):
    raw = RawClient(server)
    # CVE-2011-0411 style injection: a plaintext command riding in the same packet as STLS.
    raw.send(b"STLS\r\nUSER " + shared.address.encode() + b"\r\n")
    assert raw.line() == b"+OK Begin TLS negotiation"
    context = client_context(server)
    tls = context.wrap_socket(raw.sock, server_hostname="localhost")
    tls.sendall(b"PASS " + shared.password.encode() + b"\r\n")
    reply = tls.recv(4096)
    assert reply.startswith(b"-ERR Send USER first"), reply  # the injected USER was not acted on
    tls.sendall(b"QUIT\r\n")
    assert tls.recv(4096).startswith(b"+OK")
    tls.close()


def test_pop3s_login(server, shared):
    client = login(server, shared, tls="implicit")
    assert client.stat() == (3, sum(len(message(n)) for n in (1, 2, 3)))
    client.quit()


# ---------------------------------------------------------------- USER / PASS / AUTH


def test_user_pass_login(server, shared):
    client = connect(server)
    assert client.user(shared.address) == b"+OK Send your password"
    total = sum(len(message(n)) for n in (1, 2, 3))
    assert client.pass_(shared.password) == b"+OK Logged in, 3 messages (%d octets)" % total
    assert client.quit().startswith(b"+OK")


def test_wrong_password_gets_auth_code_and_session_continues(server, shared):
    client = connect(server)
    client.user(shared.address)
    assert err(client.pass_, "wrong-password") == b"-ERR [AUTH] Authentication failed"
    client.user(shared.address)
    assert client.pass_(shared.password).startswith(b"+OK")
    client.quit()


def test_unknown_user_gets_auth_code(server):
    client = connect(server)
    client.user("nobody@example.test")
    assert err(client.pass_, "whatever-password") == b"-ERR [AUTH] Authentication failed"
    client.quit()


def test_pass_without_user(server):
    client = connect(server)
    assert err(client.pass_, "x") == b"-ERR Send USER first"
    client.quit()


def test_password_with_spaces(server):
    user = server.new_user("pass word with spaces")
    client = connect(server)
    client.user(user.address)
    assert client.pass_(user.password).startswith(b"+OK")  # RFC 1939 §7: rest of the line
    client.quit()


def test_transaction_commands_before_login_refused(server):
    client = connect(server)
    for command in ("STAT", "LIST", "UIDL", "RETR 1", "TOP 1 0", "DELE 1", "NOOP", "RSET"):
        assert err(client._shortcmd, command).startswith(b"-ERR Not logged in"), command
    client.quit()


def test_auth_commands_after_login_refused(server, shared):
    client = login(server, shared)
    for command in ("USER x", "PASS x", "AUTH PLAIN"):
        assert err(client._shortcmd, command) == b"-ERR Already logged in", command
    client.quit()


def plain(authcid: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def test_auth_plain_with_initial_response(server, shared):
    client = connect(server)
    assert client._shortcmd("AUTH PLAIN " + plain(shared.address, shared.password)).startswith(b"+OK Logged in")
    client.quit()


def test_auth_plain_with_challenge(server, shared):
    raw = RawClient(server)
    raw.send(b"AUTH PLAIN\r\n")
    assert raw.line() == b"+ "
    raw.send(plain(shared.address, shared.password).encode() + b"\r\n")
    assert raw.line().startswith(b"+OK Logged in")
    raw.send(b"QUIT\r\n")
    assert raw.line().startswith(b"+OK")
    raw.close()


def test_auth_plain_cancel_and_errors(server, shared):
    raw = RawClient(server)
    raw.send(b"AUTH PLAIN\r\n")
    assert raw.line() == b"+ "
    raw.send(b"*\r\n")
    assert raw.line() == b"-ERR Authentication cancelled"
    raw.send(b"AUTH PLAIN !!!notbase64\r\n")
    assert raw.line() == b"-ERR Invalid base64 data in SASL response"
    raw.send(b"AUTH PLAIN =\r\n")
    assert raw.line() == b"-ERR Invalid base64 data in SASL response"
    raw.send(b"AUTH PLAIN " + plain(shared.address, "wrong-password").encode() + b"\r\n")
    assert raw.line() == b"-ERR [AUTH] Authentication failed"
    raw.send(b"AUTH PLAIN " + plain(shared.address, shared.password, "other@example.test").encode() + b"\r\n")
    assert raw.line().startswith(b"-ERR [AUTH] Authorization identity")
    raw.send(b"AUTH CRAM-MD5\r\n")
    assert raw.line() == b"-ERR Unsupported SASL mechanism (only PLAIN)"
    raw.send(b"AUTH\r\n")
    assert raw.line().startswith(b"+OK")
    assert raw.multiline() == [b"PLAIN"]
    raw.send(b"AUTH PLAIN " + plain(shared.address, shared.password, shared.address).encode() + b"\r\n")
    assert raw.line().startswith(b"+OK Logged in")
    raw.send(b"QUIT\r\n")
    raw.line()
    raw.close()


def test_apop_not_offered(server, shared):
    client = connect(server)
    assert b"<" not in client.getwelcome()  # no APOP timestamp in the greeting
    assert err(client._shortcmd, f"APOP {shared.address} 0123456789abcdef").startswith(b"-ERR Unknown command")
    client.quit()


# ---------------------------------------------------------------- TRANSACTION state


@pytest.fixture
def mailbox(server, shared):
    """The shared account (three messages), logged in; left as found (RSET before QUIT)."""
    client = login(server, shared)
    yield client, [message(n) for n in (1, 2, 3)], None
    try:
        client.rset()
        client.quit()
    except (poplib.error_proto, OSError):
        pass


def test_stat_list_uidl(mailbox):
    client, raws, uids = mailbox
    total = sum(len(r) for r in raws)
    assert client.stat() == (3, total)
    response, lines, _ = client.list()
    assert response == b"+OK 3 messages (%d octets)" % total
    assert lines == [b"%d %d" % (i + 1, len(r)) for i, r in enumerate(raws)]
    assert client.list(2) == b"+OK 2 %d" % len(raws[1])
    _, uidl_lines, _ = client.uidl()
    ids = [line.split()[1] for line in uidl_lines]
    assert len(set(ids)) == 3 and all(33 <= b <= 126 for i in ids for b in i) and all(len(i) <= 70 for i in ids)
    assert client.uidl(3) == b"+OK 3 " + ids[2]


def test_retr_and_top(mailbox):
    client, raws, _ = mailbox
    response, lines, _ = client.retr(2)
    assert response == b"+OK %d octets" % len(raws[1])
    assert b"\r\n".join(lines) + b"\r\n" == raws[1]
    response, lines, _ = client.top(1, 0)
    assert response.startswith(b"+OK")
    assert b"\r\n".join(lines) + b"\r\n" == raws[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n"


def test_top_counts_body_lines(server, user):
    body = b"".join(b"line %d\r\n" % i for i in range(1, 11))
    deliver(server, user, message(1, body))
    client = login(server, user)
    _, lines, _ = client.top(1, 3)
    blank = lines.index(b"")
    assert lines[blank + 1:] == [b"line 1", b"line 2", b"line 3"]
    _, lines, _ = client.top(1, 100)
    assert b"\r\n".join(lines) + b"\r\n" == message(1, body)
    client.quit()


def test_dot_stuffing_and_bare_lf(server, user):
    body = b".starts with a dot\r\n..two dots\r\n.\r\nend\r\n"
    raw = message(1, body)
    deliver(server, user, raw)
    lf_raw = message(2, b"bare\nline feeds\n.dot\n").replace(b"\r\n", b"\n")
    deliver(server, user, lf_raw)
    raw_client = RawClient(server)
    raw_client.send(f"USER {user.address}\r\nPASS {user.password}\r\nRETR 1\r\nRETR 2\r\nQUIT\r\n".encode())
    assert raw_client.line().startswith(b"+OK")
    assert raw_client.line().startswith(b"+OK Logged in")
    assert raw_client.line().startswith(b"+OK")
    wire = raw_client.multiline()
    assert b".starts with a dot" not in wire and b"..starts with a dot" in wire
    assert b"...two dots" in wire and b".." in wire  # the lone "." line is stuffed to ".."
    assert raw_client.line().startswith(b"+OK")
    second = raw_client.multiline()  # every line came CRLF-terminated (readline split on LF)
    assert b"..dot" in second and b"bare" in second
    raw_client.close()
    client = login(server, user)
    assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == raw  # poplib unstuffs: exact bytes back
    client.quit()


def test_message_number_errors(mailbox):
    client, _, _ = mailbox
    assert err(client.retr, 4) == b"-ERR No such message, only 3 messages in maildrop"
    assert err(client.retr, 0) == b"-ERR Invalid message number: 0"
    assert err(client._shortcmd, "RETR abc") == b"-ERR Invalid message number: abc"
    assert err(client._shortcmd, "RETR -1") == b"-ERR Invalid message number: -1"
    assert err(client._shortcmd, "LIST 9") == b"-ERR No such message, only 3 messages in maildrop"
    assert err(client._shortcmd, "UIDL x") == b"-ERR Invalid message number: x"
    assert err(client._shortcmd, "TOP 1 x") == b"-ERR Invalid line count: x"
    assert err(client._shortcmd, "TOP 1 -2") == b"-ERR Invalid line count: -2"
    assert err(client._shortcmd, "DELE 7") == b"-ERR No such message, only 3 messages in maildrop"
    assert client.noop() == b"+OK"  # the session continues


def test_syntax_errors(mailbox):
    client, _, _ = mailbox
    assert err(client._shortcmd, "RETR") == b"-ERR Syntax error, expected: RETR msg"
    assert err(client._shortcmd, "RETR 1 2") == b"-ERR Syntax error, expected: RETR msg"
    assert err(client._shortcmd, "TOP 1") == b"-ERR Syntax error, expected: TOP msg lines"
    assert err(client._shortcmd, "STAT 1") == b"-ERR Syntax error, expected: STAT"
    assert err(client._shortcmd, "DELE") == b"-ERR Syntax error, expected: DELE msg"
    assert err(client._shortcmd, "XYZZY") == b"-ERR Unknown command: XYZZY"
    assert err(client._shortcmd, "LAST") == b"-ERR Unknown command: LAST"
    assert client.noop() == b"+OK"


def test_commands_are_case_insensitive(mailbox):
    client, raws, _ = mailbox
    assert client._shortcmd("stat") == b"+OK 3 %d" % sum(len(r) for r in raws)
    assert client._shortcmd("noop") == b"+OK"


def test_dele_marks_and_rset_unmarks(mailbox):
    client, raws, _ = mailbox
    assert client.dele(2) == b"+OK Message 2 deleted"
    assert client.stat() == (2, len(raws[0]) + len(raws[2]))
    assert [line.split()[0] for line in client.list()[1]] == [b"1", b"3"]
    assert [line.split()[0] for line in client.uidl()[1]] == [b"1", b"3"]
    assert err(client.retr, 2) == b"-ERR Message 2 already deleted"
    assert err(client.top, 2, 0) == b"-ERR Message 2 already deleted"
    assert err(client.dele, 2) == b"-ERR Message 2 already deleted"
    assert err(client.list, 2) == b"-ERR Message 2 already deleted"
    assert err(client.uidl, 2) == b"-ERR Message 2 already deleted"
    assert client.rset() == b"+OK Maildrop has 3 messages (%d octets)" % sum(len(r) for r in raws)
    assert client.stat()[0] == 3
    assert b"\r\n".join(client.retr(2)[1]) + b"\r\n" == raws[1]


def test_quit_applies_deletions(server, user):
    for n in (1, 2, 3):
        deliver(server, user, message(n))
    client = login(server, user)
    client.dele(1)
    client.dele(3)
    assert client.quit() == b"+OK Casella POP3 server signing off (2 messages deleted, 1 left)"
    client = login(server, user)
    assert client.stat() == (1, len(message(2)))
    assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == message(2)
    client.quit()


def test_quit_before_login(server):
    client = connect(server)
    assert client.quit() == b"+OK Casella POP3 server signing off"


def test_maildrop_is_a_snapshot_at_login(server, user):
    deliver(server, user, message(1))
    client = login(server, user)
    deliver(server, user, message(2))  # arrives during the session: seen at the next login
    assert client.stat()[0] == 1
    assert err(client.retr, 2).startswith(b"-ERR No such message")
    client.quit()
    client = login(server, user)
    assert client.stat()[0] == 2
    client.quit()


def test_pipelining(server, user):
    for n in (1, 2):
        deliver(server, user, message(n))
    raw = RawClient(server)
    raw.send(f"CAPA\r\nUSER {user.address}\r\nPASS {user.password}\r\nSTAT\r\nRETR 1\r\nLIST\r\n"
             f"DELE 1\r\nRETR 1\r\nUIDL\r\nNOOP\r\nQUIT\r\n".encode())
    assert raw.line().startswith(b"+OK")
    assert raw.multiline() == EXPECTED_CAPA
    assert raw.line() == b"+OK Send your password"
    assert raw.line().startswith(b"+OK Logged in, 2 messages")
    assert raw.line() == b"+OK 2 %d" % (len(message(1)) + len(message(2)))
    assert raw.line().startswith(b"+OK")
    assert b"\r\n".join(raw.multiline()) + b"\r\n" == message(1)
    assert raw.line().startswith(b"+OK 2 messages")
    assert len(raw.multiline()) == 2
    assert raw.line() == b"+OK Message 1 deleted"
    assert raw.line() == b"-ERR Message 1 already deleted"
    assert raw.line().startswith(b"+OK")
    assert [line.split()[0] for line in raw.multiline()] == [b"2"]
    assert raw.line() == b"+OK"
    assert raw.line() == b"+OK Casella POP3 server signing off (1 messages deleted, 1 left)"
    assert raw.file.read() == b""  # closed after QUIT
    raw.close()


def test_line_too_long_closes_with_reason(server):
    raw = RawClient(server)
    raw.send(b"NOOP " + b"x" * 5000 + b"\r\n")
    assert raw.line() == b"-ERR Line too long, closing connection"
    assert raw.file.read() == b""
    raw.close()


def test_empty_line_is_an_unknown_command(server):
    raw = RawClient(server)
    raw.send(b"\r\n")
    assert raw.line() == b"-ERR Unknown command: "
    raw.send(b"QUIT\r\n")
    assert raw.line().startswith(b"+OK")
    raw.close()


def test_one_log_line_per_connection(server, user):
    client = login(server, user)
    client.noop()
    client.quit()
    connect(server).quit()

    def lines() -> list[str]:
        return [line for line in server.daemon.log_text().splitlines()
                if "casella.pop3: session" in line and f"user={user.address}" in line]

    import time

    deadline = time.monotonic() + 5
    while not lines() and time.monotonic() < deadline:
        time.sleep(0.05)
    found = lines()
    assert len(found) == 1 and "end=quit" in found[0] and "peer=127.0.0.1" in found[0], found
