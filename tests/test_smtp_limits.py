"""Every SMTP limit is a setting, and each test here crosses one (a dedicated SQLite daemon with
small values; the limits live in the protocol layer, not the store)."""
from __future__ import annotations

import base64
import smtplib
import socket
import time

import pytest

if __package__:
    from .conftest import _start_server, _stop_server
    from .test_smtp_support import STRICT_ENV, Raw, mailbox, message, mx, submission
else:
    from conftest import _start_server, _stop_server
    from test_smtp_support import STRICT_ENV, Raw, mailbox, message, mx, submission

LIMITS = {
    "CASELLA_SMTP__MAX_MESSAGE_SIZE": "20000",
    "CASELLA_SMTP__MAX_RECIPIENTS": "3",
    "CASELLA_SMTP__MAX_LINE_LENGTH": "200",
    "CASELLA_SMTP__MAX_COMMANDS_BEFORE_MAIL": "8",
    "CASELLA_SMTP__MAX_CONNECTIONS_PER_IP": "3",
    "CASELLA_SMTP__IDLE_TIMEOUT": "1.5",
    "CASELLA_AUTH__FAILURES_BEFORE_DELAY": "2",
    "CASELLA_AUTH__FAILURE_DELAY_SECONDS": "0.3",
    "CASELLA_AUTH__FAILURES_BEFORE_LOCKOUT": "4",
    "CASELLA_AUTH__LOCKOUT_SECONDS": "600",
}


@pytest.fixture(scope="module")
def limited():
    srv, pg_url, workdir = _start_server("sqlite", {**STRICT_ENV, **LIMITS})
    yield srv
    log = srv.daemon.log_text()
    _stop_server(srv, pg_url, workdir)
    assert "Traceback" not in log  # every error path gave a reply, none crashed the session


def test_size_advertised_and_enforced(limited):
    user = limited.new_user()
    with mx(limited) as client:
        client.ehlo("mta.test")
        assert client.esmtp_features["size"] == "20000"
        code, text = client.mail("a@remote.test", ["SIZE=20001"])  # RFC 1870 §6.1
        assert (code, text[:5]) == (552, b"5.3.4")
        client.mail("a@remote.test", ["SIZE=100"])  # a client that under-declares is still stopped
        client.rcpt(user.address)
        code, text = client.data(message("a@remote.test", user.address, body=("z" * 100 + "\r\n") * 250))
        assert (code, text[:5]) == (552, b"5.3.4")
        client.mail("a@remote.test")
        client.rcpt(user.address)
        assert client.data(message("a@remote.test", user.address, body=("z" * 100 + "\r\n") * 150))[0] == 250
        # Exactly at the limit passes, one octet more does not (RFC 1870: the limit is inclusive).
        exact = b"Subject: exact\r\n\r\n" + (b"f" * 98 + b"\r\n") * 199 + b"f" * 80 + b"\r\n"
        assert len(exact) == 20000
        for payload, expected in ((exact, 250), (exact + b"g\r\n", 552)):
            client.mail("a@remote.test")
            client.rcpt(user.address)
            code, _ = client.data(payload)
            assert code == expected
    assert len(mailbox(limited, user)) == 2


def test_recipients_per_message(limited):
    users = [limited.new_user() for _ in range(4)]
    with mx(limited) as client:
        client.ehlo("mta.test")
        client.mail("a@remote.test")
        for target in users[:3]:
            assert client.rcpt(target.address)[0] == 250
        code, text = client.rcpt(users[3].address)
        assert (code, text[:5]) == (452, b"4.5.3")  # RFC 5321 §4.5.3.1.8
        assert client.data(message("a@remote.test", users[0].address))[0] == 250
    assert [len(mailbox(limited, u)) for u in users] == [1, 1, 1, 0]


def test_line_length(limited):
    user = limited.new_user()
    with mx(limited) as client:
        client.ehlo("mta.test")
        client.mail("a@remote.test")
        client.rcpt(user.address)
        code, text = client.data(b"Subject: long\r\n\r\n" + b"w" * 201 + b"\r\n")
        assert (code, text[:5]) == (500, b"5.5.2")
        client.mail("a@remote.test")
        client.rcpt(user.address)
        assert client.data(b"Subject: fits\r\n\r\n" + b"w" * 198 + b"\r\n")[0] == 250
        code, text = client.docmd("NOOP " + "n" * 300)  # a command line over the limit
        assert (code, text[:5]) == (500, b"5.5.2")
        assert client.noop()[0] == 250
    assert len(mailbox(limited, user)) == 1


def test_commands_before_mail(limited):
    raw = Raw(limited)
    raw.cmd(b"EHLO mta.test")
    for _ in range(6):
        assert raw.cmd(b"NOOP").startswith(b"250")
    assert raw.cmd(b"MAIL FROM:<a@remote.test>").startswith(b"250")  # the 8th command: within budget
    assert raw.cmd(b"RSET").startswith(b"250")  # inside the transaction: not counted
    for _ in range(8):
        assert raw.cmd(b"VRFY someone@example.test").startswith(b"252")
    assert raw.cmd(b"NOOP").startswith(b"421 4.7.0")
    assert raw.closed()
    raw.close()


def test_idle_timeout(limited):
    raw = Raw(limited)
    assert raw.cmd(b"EHLO mta.test").startswith(b"250")
    started = time.monotonic()
    assert raw.closed(timeout=10)
    assert b"421 4.4.2" in raw.buffer
    assert 1.0 < time.monotonic() - started < 8
    raw.close()


def _raw_at_data(server, user) -> Raw:  # noqa: ANN001
    """A raw SMTP session that has had its 354 for one message to `user`."""
    raw = Raw(server)
    raw.cmd(b"EHLO mta.test")
    raw.cmd(b"MAIL FROM:<a@remote.test>")
    raw.cmd(b"RCPT TO:<" + user.address.encode() + b">")
    assert raw.cmd(b"DATA").startswith(b"354")
    return raw


def test_slow_but_steady_data_is_not_idle(limited):
    user = limited.new_user()
    raw = _raw_at_data(limited, user)
    for n in range(6):  # 3 s of upload, longer than the 1.5 s idle timeout, never silent for long
        raw.send(b"line %d\r\n" % n)
        time.sleep(0.5)
    assert raw.cmd(b".").startswith(b"250")
    raw.close()


def test_connections_per_address(limited):
    time.sleep(0.3)  # let earlier tests' connections be closed server-side
    held = [Raw(limited) for _ in range(3)]
    assert all(r.greeting.startswith(b"220") for r in held)
    extra = socket.create_connection((limited.host, limited.port("smtp")), timeout=10)
    reply = extra.recv(1000)
    assert reply.startswith(b"421 4.7.0")
    extra.close()
    held[0].cmd(b"QUIT")
    held[0].close()
    time.sleep(0.3)
    again = Raw(limited)
    assert again.greeting.startswith(b"220")
    for r in (again, *held[1:]):
        r.close()


def test_auth_throttle_then_lockout(limited):
    user = limited.new_user()
    good = base64.b64encode(f"\0{user.address}\0{user.password}".encode()).decode()
    bad = base64.b64encode(f"\0{user.address}\0wrong-password".encode()).decode()
    time.sleep(0.3)
    with submission(limited) as client:
        replies = [client.docmd("AUTH PLAIN " + bad) for _ in range(3)]
        assert [code for code, _ in replies] == [535, 535, 535]
        code, text = client.docmd("AUTH PLAIN " + bad)  # the 4th failure locks the address out
        assert (code, text[:5]) == (421, b"4.7.0")
    # Locked: even the right password is refused, on a new connection, for lockout_seconds.
    with submission(limited) as client:
        try:
            code, text = client.docmd("AUTH PLAIN " + good)
        except smtplib.SMTPServerDisconnected:
            code = 421
        assert code == 421


@pytest.mark.parametrize("pieces", [
    [b"c" * 250 + b"\r\n"],  # the very first line
    [b"Subject: x\r\n\r\n" + b"a" * 150, b"a" * 100 + b"\r\n"],  # a line arriving in two packets
    [b"Subject: x\r\n\r\nok\r\n" + b"d" * 199, b"d\r", b"\n"],  # one octet over, the CRLF split
], ids=["first-line", "split-line", "split-crlf"])
def test_line_length_across_packets(limited, pieces):
    user = limited.new_user()
    raw = _raw_at_data(limited, user)
    for piece in pieces:
        raw.send(piece)
        time.sleep(0.1)
    assert raw.cmd(b".").startswith(b"500 5.5.2")
    assert raw.cmd(b"NOOP").startswith(b"250")
    raw.close()
    assert mailbox(limited, user) == []


def test_graceful_shutdown_finishes_transactions(limited):
    """Last in this module: it stops the module's daemon (shutdown_timeout is 3 s there)."""
    srv = limited
    user = srv.new_user()
    idle = Raw(srv)
    idle.cmd(b"EHLO idle.test")
    busy = Raw(srv)
    busy.cmd(b"EHLO busy.test")
    busy.cmd(b"MAIL FROM:<a@remote.test>")
    busy.cmd(b"RCPT TO:<" + user.address.encode() + b">")
    assert busy.cmd(b"DATA").startswith(b"354")
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    srv.daemon.process.send_signal(__import__("signal").SIGTERM)
    assert idle.closed(timeout=5)  # between transactions: told and closed at once
    assert idle.buffer.startswith(b"421 4.3.2")
    time.sleep(0.5)
    busy.send(b"second half\r\n.\r\n")  # mid-transaction: allowed to finish
    assert busy.reply().startswith(b"250 2.0.0")
    assert busy.closed(timeout=5)
    assert srv.daemon.process.wait(15) == 0
    stored = mailbox(srv, user)
    assert len(stored) == 1 and stored[0].endswith(b"first half\r\nsecond half\r\n")
    idle.close()
    busy.close()

