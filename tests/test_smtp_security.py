"""SMTP attacks proven with raw sockets: STARTTLS command injection (CVE-2011-0411 class),
SMTP smuggling (only <CRLF>.<CRLF> ends DATA), hostile bytes in commands."""
from __future__ import annotations

import pytest

if __package__:
    from .test_smtp_support import Raw, body_of, mailbox, tls_context
else:
    from test_smtp_support import Raw, body_of, mailbox, tls_context


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_commands_pipelined_after_starttls_are_discarded(server, user, listener):
    raw = Raw(server, listener)
    assert raw.cmd(b"EHLO client.test").startswith(b"250-")
    # One packet: STARTTLS plus plaintext commands an attacker in the middle appended.
    raw.send(b"STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<evil@remote.test>\r\n")
    assert raw.reply().startswith(b"220 2.0.0")
    assert raw.buffer == b""
    tls = tls_context(server).wrap_socket(raw.sock, server_hostname="localhost")
    raw.sock = tls
    # Had the injected commands run inside TLS, this RCPT would be accepted.
    reply = raw.cmd(b"RCPT TO:<" + user.address.encode() + b">")
    assert reply.startswith(b"503 5.5.1"), reply
    assert raw.cmd(b"EHLO client.test").startswith(b"250-")
    assert raw.cmd(b"RCPT TO:<" + user.address.encode() + b">").startswith(b"503 5.5.1")  # no MAIL either
    assert raw.cmd(b"NOOP").startswith(b"250 2.0.0")  # and no stray replies were queued before it
    raw.close()


def _smuggle(server, user, body: bytes) -> tuple[bytes, bytes]:
    raw = Raw(server)
    assert raw.cmd(b"EHLO client.test").startswith(b"250")
    assert raw.cmd(b"MAIL FROM:<a@remote.test>").startswith(b"250")
    assert raw.cmd(b"RCPT TO:<" + user.address.encode() + b">").startswith(b"250")
    assert raw.cmd(b"DATA").startswith(b"354")
    raw.send(body + b"\r\n.\r\n")
    reply = raw.reply()
    follow = raw.cmd(b"NOOP")
    raw.close()
    return reply, follow


@pytest.mark.parametrize("ending", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"],
                         ids=["LF.LF", "CR.CR", "CRLF.LF", "LF.CRLF", "CR.CRLF"])
def test_only_crlf_dot_crlf_ends_data(server, user, ending):
    smuggled = (b"MAIL FROM:<smuggler@remote.test>" + ending[-1:] + b"RCPT TO:<" + user.address.encode() + b">"
                + ending[-1:] + b"DATA" + ending[-1:] + b"Subject: smuggled" + ending[-1:] + ending[-1:] + b"evil")
    body = b"Subject: carrier\r\n\r\nfirst part" + ending + smuggled
    reply, follow = _smuggle(server, user, body)
    assert reply.startswith(b"250 2.0.0"), reply
    assert follow.startswith(b"250 2.0.0"), follow  # no replies from smuggled commands in between
    stored = mailbox(server, user)
    assert len(stored) == 1
    # The bare CR/LF sequences are content, kept byte-exact; a dot opening a CRLF line is
    # transparency (RFC 5321 §4.5.2) and removed.
    assert body_of(stored[0]) == body.replace(b"\r\n.", b"\r\n") + b"\r\n"


def test_hostile_bytes_in_commands_get_replies(server, user):
    raw = Raw(server)
    assert raw.cmd(b"EHLO \xff\xfe\x00host").startswith(b"250")
    assert raw.cmd(b"MAIL FROM:<\xff\xfe@remote.test>").startswith(b"553 5.1.3")  # not UTF-8
    assert raw.cmd(b"MAIL FROM:<a\x01b@remote.test>").startswith(b"553 5.1.3")
    assert raw.cmd(b"\xff\xfe\xfd").startswith(b"500")
    assert raw.cmd(b"MAIL FROM:<a@remote.test>").startswith(b"250")
    assert raw.cmd(b"RCPT TO:<\x00@example.test>").startswith(b"553 5.1.3")
    assert raw.cmd(b"RCPT TO:<" + user.address.encode() + b">").startswith(b"250")
    assert raw.cmd(b"DATA").startswith(b"354")
    assert raw.cmd(b"Subject: x\r\n\r\nok\r\n.").startswith(b"250")
    assert b"\r\n\r\nok\r\n" in mailbox(server, user)[0]
    assert raw.cmd(b"QUIT").startswith(b"221")
    raw.close()


def test_no_auth_on_mx_and_no_relay_through_tls(server, user):
    raw = Raw(server)
    raw.cmd(b"EHLO client.test")
    raw.send(b"STARTTLS\r\n")
    assert raw.reply().startswith(b"220")
    raw.sock = tls_context(server).wrap_socket(raw.sock, server_hostname="localhost")
    ehlo = raw.cmd(b"EHLO client.test")
    assert b"STARTTLS" not in ehlo and b"AUTH" not in ehlo  # RFC 3207 §4.2
    assert raw.cmd(b"AUTH PLAIN AGZvbwBiYXI=").startswith(b"503 5.5.1")
    assert raw.cmd(b"STARTTLS").startswith(b"554 5.5.1")  # no TLS inside TLS
    raw.close()


def test_tls_handshake_garbage_does_not_hurt_server(server, user):
    raw = Raw(server)
    raw.cmd(b"EHLO client.test")
    raw.send(b"STARTTLS\r\n")
    assert raw.reply().startswith(b"220")
    raw.send(b"this is not a TLS ClientHello\r\n")
    assert raw.closed(10)
    raw.close()
    again = Raw(server)
    assert again.cmd(b"NOOP").startswith(b"250")
    again.close()
    # The client's mistake is noted, not logged as an error of ours with a traceback.
    log = server.daemon.log_text()
    assert "TLS handshake after STARTTLS failed" in log and "reason=TLS handshake failed" in log
    assert "smtp internal error" not in log


def test_terminator_split_across_packets_and_empty_message(server, user):
    raw = Raw(server)
    raw.cmd(b"EHLO client.test")
    raw.cmd(b"MAIL FROM:<a@remote.test>")
    raw.cmd(b"RCPT TO:<" + user.address.encode() + b">")
    assert raw.cmd(b"DATA").startswith(b"354")
    import time

    for piece in (b"Subject: split\r\n\r\nbody\r", b"\n", b".", b"\r", b"\n"):
        raw.send(piece)
        time.sleep(0.05)
    assert raw.reply().startswith(b"250 2.0.0")
    raw.cmd(b"MAIL FROM:<a@remote.test>")
    raw.cmd(b"RCPT TO:<" + user.address.encode() + b">")
    assert raw.cmd(b"DATA").startswith(b"354")
    assert raw.cmd(b".").startswith(b"250 2.0.0")  # an empty message is a message
    raw.close()
    first, empty = mailbox(server, user)
    assert body_of(first) == b"Subject: split\r\n\r\nbody\r\n"
    assert body_of(empty) == b""
