"""SMTP delivery into the store over real sockets (MX and submission), on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import os
import re
import smtplib

if __package__:
    from .test_smtp_support import (Raw, User, body_of, mailbox, message, mx, submission, submissions,
                                    wait_for_messages)
else:
    from test_smtp_support import Raw, User, body_of, mailbox, message, mx, submission, submissions, wait_for_messages


def test_ehlo_advertises_extensions(server):
    with mx(server) as client:
        code, text = client.ehlo("mta.test")
        assert code == 250
        lines = text.decode().split("\n")
        assert "SIZE 52428800" in lines
        for ext in ("8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"):
            assert ext in lines
        assert not any(line.startswith("AUTH") for line in lines)  # MX: no AUTH on port 25
    # Submission from loopback without TLS: AUTH offered because auth.allow_plaintext_on_loopback
    # (test_smtp_policy checks the production setting, where it is not).
    with submission(server, tls=False) as client:
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert "starttls" in client.esmtp_features


def test_mx_delivery_adds_trace_fields_and_keeps_content(server, user):
    raw = message("alice@remote.test", user.address, "mx")
    with mx(server) as client:
        client.ehlo("mta.remote.test")
        code, reply = client.mail("alice@remote.test")
        assert (code, reply[:5]) == (250, b"2.1.0")
        code, reply = client.rcpt(user.address)
        assert (code, reply[:5]) == (250, b"2.1.5")
        code, reply = client.data(raw)
        assert code == 250 and reply.startswith(b"2.0.0")
    # The 250 came after the commit: the message is already there, no waiting.
    [stored] = mailbox(server, user)
    assert stored.startswith(b"Return-Path: <alice@remote.test>\r\nReceived: from mta.remote.test ([127.0.0.1])")
    assert b"with ESMTP id " in stored
    assert f"for <{user.address}>;".encode() in stored
    assert body_of(stored) == raw


def test_dot_stuffing_is_undone(server, user):
    raw = message("a@remote.test", user.address, body="line\r\n.leading dot\r\n..two dots\r\n.")
    with mx(server) as client:
        client.sendmail("a@remote.test", [user.address], raw)
    assert body_of(mailbox(server, user)[0]) == raw


def test_eight_bit_and_invalid_utf8_stored_byte_exact(server, user):
    raw = (b"From: \xc3\xa9l\xc3\xa8ve <a@remote.test>\r\nSubject: caf\xe9 \xff\xfe broken \xc3\x28\r\n"
           b"X-Latin1: \xe0\xe8\xec\r\n\r\nbody \x80\x81\xfe\xff\r\n\xc3\xa9t\xc3\xa9\r\n\x00nul\r\n")
    with mx(server) as client:
        client.ehlo("mta.test")
        client.mail("a@remote.test", ["BODY=8BITMIME"])
        client.rcpt(user.address)
        code, _ = client.data(raw)
        assert code == 250
    assert body_of(mailbox(server, user)[0]) == raw


def test_smtputf8_address_and_header(server, user):
    raw = "From: Jörg <jörg@remote.test>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    with mx(server) as client:
        client.ehlo("mta.test")
        code, _ = client.mail("jörg@remote.test", ["SMTPUTF8", "BODY=8BITMIME"])
        assert code == 250
        assert client.rcpt(user.address)[0] == 250
        assert client.data(raw)[0] == 250
    stored = mailbox(server, user)[0]
    assert "Return-Path: <jörg@remote.test>".encode() in stored
    assert b"with UTF8SMTP id" in stored
    assert body_of(stored) == raw


def test_ten_megabyte_message_byte_exact(server, user):
    payload = os.urandom(10 * 1024 * 1024 // 4 * 3)
    import base64

    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    raw = (b"From: a@remote.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded)
    assert len(raw) > 10 * 1024 * 1024
    with mx(server) as client:
        client.sendmail("a@remote.test", [user.address], raw)
    [stored] = mailbox(server, user)
    assert hashlib.sha256(body_of(stored)).hexdigest() == hashlib.sha256(raw).hexdigest()


def test_one_copy_shared_by_local_recipients(server):
    first, second = server.new_user(), server.new_user()
    with mx(server) as client:
        client.sendmail("a@remote.test", [first.address, second.address], message("a@remote.test", first.address))
    a, b = mailbox(server, first), mailbox(server, second)
    assert a == b and len(a) == 1
    assert b"for <" not in a[0]  # several recipients: none named in Received


def test_submission_starttls_auth_delivers_locally(server, user):
    other = server.new_user()
    with submission(server, user) as client:
        client.sendmail(user.address, [other.address], message(user.address, other.address, "sub"))
    [stored] = mailbox(server, other)
    assert b"with ESMTPSA id" in stored
    assert re.search(rb"\(version=TLSv1\.[23] cipher=\S+ bits=\d+\)", stored)


def test_implicit_tls_submission(server, user):
    with submissions(server, user) as client:
        client.sendmail(user.address, [user.address], message(user.address, user.address, "465"))
    [stored] = mailbox(server, user)
    assert b"with ESMTPSA id" in stored and b"version=TLSv1." in stored


def test_dev_catch_all_catches_unknown_and_remote(server):
    demo = server.admin.run(server.admin.store.get_account("demo@localhost"))
    demo_user = User("demo@localhost", "demo-password", demo.id)
    before = len(mailbox(server, demo_user))
    with mx(server) as client:
        client.sendmail("app@remote.test", ["nobody@example.test", "someone@elsewhere.test"],
                        message("app@remote.test", "nobody@example.test", "caught"))
    after = mailbox(server, demo_user)
    assert len(after) == before + 1 and b"Subject: caught" in after[-1]
    assert server.admin.run(server.admin.store.list_outbound()) == () or all(
        b"caught" not in str(item).encode() for item in server.admin.run(server.admin.store.list_outbound()))


def test_pipelined_transactions(server, user):
    raw = Raw(server)
    raw.send(b"EHLO pipe.test\r\n")
    assert raw.reply().startswith(b"250-")
    one = message("a@remote.test", user.address, "p1")
    two = message("a@remote.test", user.address, "p2")
    raw.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<" + user.address.encode() + b">\r\nDATA\r\n")
    assert raw.reply().startswith(b"250 2.1.0")
    assert raw.reply().startswith(b"250 2.1.5")
    assert raw.reply().startswith(b"354")
    raw.send(one + b".\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<" + user.address.encode() + b">\r\nDATA\r\n")
    assert raw.reply().startswith(b"250 2.0.0")
    assert raw.reply().startswith(b"250 2.1.0")
    assert raw.reply().startswith(b"250 2.1.5")
    assert raw.reply().startswith(b"354")
    raw.send(two + b".\r\nQUIT\r\n")
    assert raw.reply().startswith(b"250 2.0.0")
    assert raw.reply().startswith(b"221 2.0.0")
    raw.close()
    assert [body_of(m) for m in mailbox(server, user)] == [one, two]


def test_client_quirks(server, user):
    raw = Raw(server)
    assert raw.cmd(b"ehlo quirky.test").startswith(b"250")
    # Lower-case command and keyword, display name around the address: unambiguous, accepted.
    assert raw.cmd(b"mail from:Sloppy Mailer <a@remote.test>").startswith(b"250 2.1.0")
    assert raw.cmd(b"rcpt to: <" + user.address.upper().encode() + b">").startswith(b"250 2.1.5")
    assert raw.cmd(b"rset").startswith(b"250 2.0.0")
    # Two addresses, or a phrase with no address: ambiguous, rejected with a clear 5xx.
    assert raw.cmd(b"MAIL FROM:<a@remote.test> <b@remote.test>").startswith(b"501 5.5.4")
    assert raw.cmd(b"MAIL FROM:just words").startswith(b"5")
    assert raw.cmd(b"BOGUS command").startswith(b"500 5.5.1")
    assert raw.cmd(b"QUIT").startswith(b"221")
    raw.close()


def test_line_length_boundary_default(server, user):
    ok_line = b"x" * 998
    long_line = b"y" * 1001
    with mx(server) as client:
        client.sendmail("a@remote.test", [user.address], b"Subject: ok\r\n\r\n" + ok_line + b"\r\n")
        client.ehlo_or_helo_if_needed()
        client.mail("a@remote.test")
        client.rcpt(user.address)
        code, text = client.data(b"Subject: long\r\n\r\n" + long_line + b"\r\n")
        assert (code, text[:5]) == (500, b"5.5.2")
        assert client.noop()[0] == 250  # the session goes on
    [stored] = mailbox(server, user)
    assert ok_line in stored


def test_size_declared_over_limit(server, user):
    with mx(server) as client:
        client.ehlo("mta.test")
        code, text = client.mail("a@remote.test", ["SIZE=60000000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        assert client.mail("a@remote.test", ["SIZE=1000"])[0] == 250


def test_rcpt_before_mail_and_data_before_rcpt(server, user):
    with mx(server) as client:
        client.ehlo("mta.test")
        code, text = client.rcpt(user.address)
        assert (code, text[:5]) == (503, b"5.5.1")
        client.mail("a@remote.test")
        code, text = client.docmd("DATA")
        assert (code, text[:5]) == (503, b"5.5.1")


def test_wait_helper_sees_nothing_extra(server, user):
    with mx(server) as client:
        client.sendmail("a@remote.test", [user.address], message("a@remote.test", user.address))
    assert len(wait_for_messages(server, user, 1)) == 1


def test_vrfy_does_not_enumerate(server, user):
    with mx(server) as client:
        client.ehlo("mta.test")
        assert client.verify(user.address)[0] == 252
        assert client.verify("nobody@example.test")[0] == 252


def test_submission_auth_quirks(server, user):
    import base64

    plain = base64.b64encode(f"\0{user.address}\0{user.password}".encode())
    # Windows Mail: an extra space before the initial response.
    with submission(server, tls=True) as client:
        code, _ = client.docmd("AUTH PLAIN  " + plain.decode())
        assert code == 235
    # Outlook: AUTH LOGIN with the user name as initial response; lower-case mechanism.
    with submission(server, tls=True) as client:
        code, _ = client.docmd("auth login " + base64.b64encode(user.address.encode()).decode())
        assert code == 334
        code, _ = client.docmd(base64.b64encode(user.password.encode()).decode())
        assert code == 235
    # AUTH PLAIN without initial response: empty challenge "334 ".
    with submission(server, tls=True) as client:
        code, _ = client.docmd("AUTH PLAIN")
        assert code == 334
        assert client.docmd(plain.decode())[0] == 235
    # Garbage is a clear 501, and '*' cancels (RFC 4954 §4).
    with submission(server, tls=True) as client:
        assert client.docmd("AUTH PLAIN !!!notbase64")[0] == 501
        assert client.docmd("AUTH LOGIN")[0] == 334
        assert client.docmd("*")[0] == 501
        assert client.docmd("AUTH CRAM-MD5")[0] == 504


def test_wrong_password_and_sender_policy(server, user):
    with submission(server) as client:
        try:
            client.login(user.address, "wrong-password")
        except smtplib.SMTPAuthenticationError as exc:
            assert exc.smtp_code == 535 and exc.smtp_error.startswith(b"5.7.8")
        else:
            raise AssertionError("wrong password accepted")
    with submission(server) as client:
        code, text = client.mail(user.address)
        assert (code, text[:5]) == (530, b"5.7.0")  # RFC 6409 §4.3: AUTH before MAIL
        client.login(user.address, user.password)
        code, text = client.mail("someone-else@example.test")
        assert (code, text[:5]) == (553, b"5.7.1")
        code, text = client.mail("<>")
        assert code == 553
        local, domain = user.address.split("@")
        assert client.mail(f"{local}+tag@{domain}")[0] == 250  # plus-address of one's own
        client.rset()
        assert client.mail(user.address.upper())[0] == 250


def _run_sql(server, statements: list[str]) -> list:
    """Raw SQL beside the daemon (test-only fault injection: a real failing transaction, not a mock)."""
    url = server.daemon.database_url
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.split(":///", 1)[1], timeout=30)
        try:
            results = [conn.execute(sql).fetchall() for sql in statements]
            conn.commit()
            return results
        finally:
            conn.close()
    import asyncio

    import asyncpg

    async def run() -> list:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return [await conn.fetch(sql) for sql in statements]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_store_failure_is_451_and_nothing_half_written(server, user):
    inbox = server.admin.run(server.admin.store.get_mailbox(user.id, "INBOX"))
    if server.backend == "sqlite":
        create = [f"CREATE TRIGGER smtp_test_fail BEFORE INSERT ON mailbox_messages WHEN NEW.mailbox_id = {inbox.id} "
                  "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"]
        drop = ["DROP TRIGGER smtp_test_fail"]
    else:
        create = ["CREATE FUNCTION smtp_test_fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; "
                  "END $$ LANGUAGE plpgsql",
                  f"CREATE TRIGGER smtp_test_fail BEFORE INSERT ON mailbox_messages FOR EACH ROW "
                  f"WHEN (NEW.mailbox_id = {inbox.id}) EXECUTE FUNCTION smtp_test_fail()"]
        drop = ["DROP TRIGGER smtp_test_fail ON mailbox_messages", "DROP FUNCTION smtp_test_fail()"]
    count = "SELECT count(*) FROM messages"
    before = _run_sql(server, [count])[0][0][0]
    _run_sql(server, create)
    try:
        with mx(server) as client:
            client.ehlo("mta.test")
            client.mail("a@remote.test")
            client.rcpt(user.address)
            code, text = client.data(message("a@remote.test", user.address, "fails"))
            assert (code, text[:5]) == (451, b"4.3.0")
            after = _run_sql(server, [count])[0][0][0]
            assert after == before  # the content row went with the failed transaction
    finally:
        _run_sql(server, drop)
    with mx(server) as client:
        client.sendmail("a@remote.test", [user.address], message("a@remote.test", user.address, "retry"))
    [stored] = mailbox(server, user)
    assert b"Subject: retry" in stored


def test_one_log_line_per_connection_and_delivery(server, user):
    with mx(server) as client:
        client.ehlo("logged.test")
        client.mail("a@remote.test")
        client.rcpt(user.address)
        code, text = client.data(message("a@remote.test", user.address))
        ident = re.search(rb"message (\w+) accepted", text).group(1).decode()
    deadline = __import__("time").monotonic() + 5
    while __import__("time").monotonic() < deadline:
        log = server.daemon.log_text()
        if "helo=logged.test" in log:
            break
        __import__("time").sleep(0.05)
    assert len([line for line in log.splitlines() if f"smtp delivery id={ident} " in line]) == 1
    assert len([line for line in log.splitlines() if "smtp connection" in line and "helo=logged.test" in line]) == 1


def test_starttls_refused_on_implicit_tls(server):
    with submissions(server) as client:
        assert "starttls" not in client.esmtp_features
        code, text = client.docmd("STARTTLS")
        assert (code, text[:5]) == (554, b"5.5.1")
