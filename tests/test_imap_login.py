"""IMAP greeting, CAPABILITY, LOGIN, AUTHENTICATE PLAIN, STARTTLS, implicit TLS (RFC 3501 §6.1-6.2)."""
from __future__ import annotations

import base64
import imaplib
import ssl

import pytest

from .test_imap_support import Raw, login


def test_greeting_and_capabilities(server):
    raw = Raw(server)
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
    caps = raw.ok("CAPABILITY")[0].split()
    assert b"STARTTLS" in caps and b"AUTH=PLAIN" in caps and b"IDLE" in caps
    assert b"UIDPLUS" not in caps  # only after login
    raw.close()


def test_login_ok_and_post_auth_capabilities(server, user):
    client = login(server, user)
    caps = client.capability()[1][0].decode().split()
    for cap in ("UIDPLUS", "MOVE", "NAMESPACE", "SPECIAL-USE", "LIST-EXTENDED", "IDLE", "ENABLE", "ID"):
        assert cap in caps
    assert client.logout()[0] == "BYE"


def test_login_wrong_password_then_right_one(server, user):
    raw = Raw(server)
    _, tagged = raw.cmd(f'LOGIN "{user.address}" "wrong-password"')
    assert tagged.startswith(b"NO [AUTHENTICATIONFAILED]")
    raw.login(user)
    raw.ok("NOOP")
    raw.close()


def test_authenticate_plain_with_and_without_initial_response(server, user):
    token = base64.b64encode(f"\0{user.address}\0{user.password}".encode()).decode()
    raw = Raw(server)
    raw.ok(f"AUTHENTICATE PLAIN {token}")
    raw.close()
    raw = Raw(server)
    raw.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert raw.line().startswith(b"+")
    raw.send(token.encode() + b"\r\n")
    _, tagged = raw.until_tagged(b"a1")
    assert tagged.startswith(b"OK")
    raw.close()


def test_authenticate_cancel_and_unknown_mechanism(server, user):
    raw = Raw(server)
    raw.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert raw.line().startswith(b"+")
    raw.send(b"*\r\n")
    _, tagged = raw.until_tagged(b"a1")
    assert tagged.startswith(b"BAD")
    _, tagged = raw.cmd("AUTHENTICATE CRAM-MD5")
    assert tagged.startswith(b"NO")
    raw.login(user)
    raw.close()


def test_starttls_then_login(server, user):
    client = imaplib.IMAP4(server.host, server.port("imap"), timeout=10)
    client.starttls(ssl.create_default_context(cafile=server.cert_file))
    assert "STARTTLS" not in client.capability()[1][0].decode()
    client.login(user.address, user.password)
    client.select("INBOX")
    client.logout()


def test_starttls_drops_pipelined_plaintext(server, user):
    raw = Raw(server)
    tag = raw.tag()
    raw.send(tag + b" STARTTLS\r\nx1 NOOP\r\n")
    _, tagged = raw.until_tagged(tag)
    assert tagged.startswith(b"OK")
    raw.starttls(server)
    # The injected NOOP was discarded: the next answer is for our own command.
    untagged, tagged = raw.cmd("CAPABILITY")
    assert tagged.startswith(b"OK") and b"STARTTLS" not in untagged[0]
    raw.close()


def test_implicit_tls_login(server, user):
    client = login(server, user, tls=True)
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_commands_in_wrong_state(server, user):
    raw = Raw(server)
    _, tagged = raw.cmd("SELECT INBOX")
    assert tagged.startswith(b"BAD")
    raw.login(user)
    _, tagged = raw.cmd("FETCH 1 FLAGS")
    assert tagged.startswith(b"BAD")
    _, tagged = raw.cmd(f'LOGIN "{user.address}" "{user.password}"')
    assert tagged.startswith(b"BAD")
    raw.ok("NOOP")
    raw.close()


def test_logindisabled_without_tls_off_loopback(start_server):
    srv = start_server("sqlite", CASELLA_AUTH__ALLOW_PLAINTEXT_ON_LOOPBACK="false")
    user = srv.new_user()
    raw = Raw(srv)
    assert b"LOGINDISABLED" in raw.greeting and b"AUTH=PLAIN" not in raw.greeting
    _, tagged = raw.cmd(f'LOGIN "{user.address}" "{user.password}"')
    assert tagged.startswith(b"NO [PRIVACYREQUIRED]")
    tag = raw.tag()
    raw.send(tag + b" STARTTLS\r\n")
    assert raw.until_tagged(tag)[1].startswith(b"OK")
    raw.starttls(srv)
    caps = raw.ok("CAPABILITY")
    assert b"AUTH=PLAIN" in caps[0] and b"LOGINDISABLED" not in caps[0]
    raw.login(user)
    raw.close()


@pytest.mark.parametrize("limit", [2])
def test_connections_per_ip_limit(start_server, limit):
    srv = start_server("sqlite", CASELLA_IMAP__MAX_CONNECTIONS_PER_IP=str(limit))
    clients = [Raw(srv) for _ in range(limit)]
    extra = Raw(srv)
    assert extra.greeting.startswith(b"* BYE [UNAVAILABLE]")
    for client in clients:
        client.close()
    extra.close()


def test_connections_per_account_limit(start_server):
    srv = start_server("sqlite", CASELLA_IMAP__MAX_CONNECTIONS_PER_ACCOUNT="1")
    user = srv.new_user()
    first = Raw(srv)
    first.login(user)
    second = Raw(srv)
    _, tagged = second.cmd(f'LOGIN "{user.address}" "{user.password}"')
    assert tagged.startswith(b"NO [LIMIT]")
    first.ok("LOGOUT")
    first.close()


def test_idle_timeout_autologout(start_server):
    srv = start_server("sqlite", CASELLA_IMAP__IDLE_TIMEOUT="1")
    raw = Raw(srv)
    assert raw.line(timeout=5).startswith(b"* BYE Autologout")
    raw.close()


def test_tcp_keepalive_enabled(server, user):
    """Dead IDLE connections are found by TCP keep-alive (checked from the server side via ss)."""
    import shutil
    import subprocess

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) not installed")
    raw = Raw(server)
    local_port = raw.sock.getsockname()[1]
    out = subprocess.run(["ss", "-tno", "state", "established", f"( dport = :{local_port} )"],
                         capture_output=True, text=True).stdout
    assert "keepalive" in out, out
    raw.close()
