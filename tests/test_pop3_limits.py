"""POP3 limits and policies that need their own daemon: connections per address, idle timeout,
plaintext refusal, line length, login lockout, the global delete policy."""
from __future__ import annotations

import poplib
import socket
import ssl
import time

import pytest

from storage import Flag

LIMITS = {
    "CASELLA_POP3__MAX_CONNECTIONS_PER_IP": "3",
    "CASELLA_POP3__IDLE_TIMEOUT": "1.5",
    "CASELLA_POP3__MAX_LINE_LENGTH": "512",
    "CASELLA_POP3__MAX_BAD_COMMANDS": "3",
    "CASELLA_POP3__DELETE_POLICY": "archive",
    "CASELLA_AUTH__ALLOW_PLAINTEXT_ON_LOOPBACK": "false",
}


def raw_connect(server, port_name: str = "pop3") -> tuple[socket.socket, object]:
    sock = socket.create_connection((server.host, server.port(port_name)), timeout=30)
    return sock, sock.makefile("rb")


def context(server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.cert_file)


def tls_login(server, user) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL(server.host, server.port("pop3s"), context=context(server), timeout=30)
    client.user(user.address)
    client.pass_(user.password)
    return client


@pytest.mark.parametrize("backend", ["sqlite"])
def test_limits(start_server, backend):
    server = start_server(backend, **LIMITS)
    user = server.new_user()
    raw = b"From: a@example.test\r\nSubject: limit\r\n\r\nbody\r\n"
    server.admin.run(server.admin.store.deliver(raw, [user.id]))

    # Plaintext login before TLS is refused with a reason, even from loopback (the setting says so).
    client = poplib.POP3(server.host, server.port("pop3"), timeout=30)
    with pytest.raises(poplib.error_proto) as info:
        client.user(user.address)
    assert info.value.args[0].startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    with pytest.raises(poplib.error_proto) as info:
        client._shortcmd("AUTH PLAIN AHVzZXIAcGFzcw==")
    assert info.value.args[0].startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    client.stls(context(server))  # after STLS the same login works
    client.user(user.address)
    assert client.pass_(user.password).startswith(b"+OK")

    # Global delete policy "archive" (no per-account override).
    client.dele(1)
    client.quit()
    archive = server.admin.run(server.admin.store.select(user.id, "Archive", readonly=True))
    assert len(archive.messages) == 1 and archive.messages[0].flags & Flag.SEEN
    assert server.admin.run(server.admin.store.mailbox_status(user.id, "INBOX")).messages == 0

    # Line length: at the limit is fine, over it closes with a reason.
    sock, reader = raw_connect(server)
    assert reader.readline().startswith(b"+OK")
    sock.sendall(b"CAPA " + b"x" * 400 + b"\r\n")
    assert reader.readline().startswith(b"-ERR Syntax error")
    sock.sendall(b"NOOP " + b"x" * 600 + b"\r\n")
    assert reader.readline() == b"-ERR Line too long, closing connection\r\n"
    assert reader.read() == b""
    sock.close()

    # Bad commands: the third unknown or malformed one closes the session.
    sock, reader = raw_connect(server)
    assert reader.readline().startswith(b"+OK")
    sock.sendall(b"XYZZY\r\nCAPA\r\nCAPA x\r\nFOO\r\nNOOP\r\n")
    assert reader.readline() == b"-ERR Unknown command: XYZZY\r\n"
    assert reader.readline().startswith(b"+OK")
    reader.readline()  # CAPA list
    while reader.readline() != b".\r\n":
        pass
    assert reader.readline().startswith(b"-ERR Syntax error")
    assert reader.readline() == b"-ERR Unknown command: FOO\r\n"
    assert reader.readline() == b"-ERR Too many bad commands, closing connection\r\n"
    assert reader.read() == b""
    sock.close()

    # Connections per address: the fourth is refused while three are open.
    time.sleep(0.2)  # the closed sessions above have left the counter
    held = [raw_connect(server) for _ in range(3)]
    for _, reader in held:
        assert reader.readline().startswith(b"+OK")
    sock, reader = raw_connect(server)
    assert reader.readline() == b"-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n"
    assert reader.read() == b""
    sock.close()

    # Idle timeout: the held connections are closed with a reason.
    started = time.monotonic()
    for held_sock, reader in held:
        assert reader.readline() == b"-ERR Idle timeout, closing connection\r\n"
        assert reader.read() == b""
        held_sock.close()
    assert time.monotonic() - started < 10
    time.sleep(0.2)
    sock, reader = raw_connect(server)
    assert reader.readline().startswith(b"+OK")  # counter released
    sock.close()

    # A logged-in session that times out releases the maildrop lock and deletes nothing.
    server.admin.run(server.admin.store.deliver(raw, [user.id]))
    client = tls_login(server, user)
    client.dele(1)
    time.sleep(2.5)
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client.noop()
        client.noop()
    client = tls_login(server, user)  # no [IN-USE]
    assert client.stat()[0] == 1
    client.quit()

    # A client that stops reading in the middle of a big RETR is dropped after the idle timeout.
    big = raw.replace(b"body\r\n", b"x" * 998 + b"\r\n") * 1 + (b"y" * 998 + b"\r\n") * 8000
    server.admin.run(server.admin.store.deliver(big, [user.id]))
    client = tls_login(server, user)
    client._putcmd("RETR 2")
    time.sleep(4)
    client = tls_login(server, user)  # the stalled session is gone, and its lock with it
    assert client.stat()[0] == 2
    client.quit()
    stalled = [line for line in server.daemon.log_text().splitlines()
               if f"user={user.address}" in line and "retr=0 top=0 dele=0" in line and "end=timeout" in line]
    assert len(stalled) == 1, server.daemon.log_text()[-3000:]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_login_lockout(start_server, backend):
    server = start_server(backend, CASELLA_AUTH__FAILURES_BEFORE_LOCKOUT="2", CASELLA_AUTH__LOCKOUT_SECONDS="60")
    user = server.new_user()
    client = poplib.POP3(server.host, server.port("pop3"), timeout=30)
    client.user(user.address)
    with pytest.raises(poplib.error_proto) as info:
        client.pass_("wrong-password-1")
    assert info.value.args[0] == b"-ERR [AUTH] Authentication failed"
    client.user(user.address)
    with pytest.raises(poplib.error_proto) as info:
        client.pass_("wrong-password-2")
    assert info.value.args[0].startswith(b"-ERR [SYS/TEMP] Too many failed logins")
    client.user(user.address)
    with pytest.raises(poplib.error_proto) as info:
        client.pass_(user.password)  # even the right password, while locked out
    assert info.value.args[0].startswith(b"-ERR [SYS/TEMP] Too many failed logins")
    client.quit()
