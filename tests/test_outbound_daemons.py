"""Two casella daemons on loopback: A's user submits, A's worker finds B through the test DNS.

A (mail.alpha.test, DKIM key for alpha.test) delivers to B (mx.beta.test) on
B's SMTP port (`outbound.smtp_port`), found through MX records served by the
loopback DNS server. Covered: delivery with Authentication-Results
dkim=pass spf=pass dmarc=pass at B, a temporary failure then success, a
permanent failure (DSN in the sender's INBOX), an unreachable host until the
(short) lifetime ends, a restart of A in the middle (delivered once), a
forged DKIM signature (dkim=fail) and a DMARC p=reject (550 5.7.1), plus the
queue CLI.
"""
from __future__ import annotations

import re
import smtplib
import time
import uuid
from email import message_from_bytes

import pytest

from pytest_casella import CasellaServer
from server.mailauth.dkim import DkimSigner, generate_key

if __package__:
    from .conftest import BACKENDS, User, _start_server, _stop_server
    from .test_outbound_support import DnsServer, message
    from .test_smtp_support import mailbox
else:
    from conftest import BACKENDS, User, _start_server, _stop_server
    from test_outbound_support import DnsServer, message
    from test_smtp_support import mailbox

PASSWORD = "correct-horse-battery"
LIFETIME = 15.0
DEAD = "127.0.0.2"  # nothing listens there: connection refused


@pytest.fixture(scope="module")
def dns():
    server = DnsServer()
    server.set("beta.test", "MX", (10, "mx.beta.test"))
    server.set("mx.beta.test", "A", "127.0.0.1")
    server.set("alpha.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    server.set("_dmarc.alpha.test", "TXT", "v=DMARC1; p=reject")
    server.set("strict.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    server.set("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject")
    server.set("quar.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    server.set("_dmarc.quar.test", "TXT", "v=DMARC1; p=quarantine")
    yield server
    server.stop()


class Pair:
    def __init__(self, a, b, a_env, key_dir) -> None:
        self.a, self.b, self.a_env, self.key_dir = a, b, a_env, key_dir

    def user(self, server, domain: str) -> User:
        address = f"u{uuid.uuid4().hex[:8]}@{domain}"
        account = server.admin.run(server.admin.store.add_account(address, PASSWORD))
        return User(address, PASSWORD, account.id)

    def restart_a(self) -> None:
        old = self.a.daemon
        assert old.stop() == 0
        self.a.daemon = CasellaServer(old.workdir, env=old.env)
        self.a.ports = self.a.daemon.ports


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request, dns, tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("dkim")
    _, record = generate_key(key_dir, "alpha.test", "casella", "rsa-sha256", 1024)
    dns.set("casella._domainkey.alpha.test", "TXT", record)
    # The dev profile turns the MX checks off (caught mail is not judged); these daemons are "production".
    common = {**dns.env(), "CASELLA_SMTP__CATCH_ALL_ACCOUNT": "", "CASELLA_MAILAUTH__ENABLED": "true"}
    b, b_pg, b_dir = _start_server(request.param, {**common, "CASELLA_SERVER__HOSTNAME": "mx.beta.test"})
    a_env = {**common, "CASELLA_SERVER__HOSTNAME": "mail.alpha.test",
             "CASELLA_OUTBOUND__SMTP_PORT": str(b.port("smtp")), "CASELLA_OUTBOUND__POLL_INTERVAL": "0.2",
             "CASELLA_OUTBOUND__RETRY_INITIAL_SECONDS": "0.5", "CASELLA_OUTBOUND__RETRY_FACTOR": "1",
             "CASELLA_OUTBOUND__LIFETIME_SECONDS": str(LIFETIME), "CASELLA_OUTBOUND__CONNECT_TIMEOUT": "3",
             "CASELLA_DKIM__KEY_DIR": str(key_dir)}
    try:
        a, a_pg, a_dir = _start_server(request.param, a_env)
    except BaseException:
        _stop_server(b, b_pg, b_dir)
        raise
    for server, domain in ((a, "alpha.test"), (b, "beta.test"), (b, "gamma.test")):
        server.admin.run(server.admin.store.add_domain(domain))
    made = Pair(a, b, a_env, key_dir)
    # Submitted now, so the lifetime runs out while the other tests run (see the last test).
    dns.set("dead.test", "MX", (10, "mx.dead.test"))
    dns.set("mx.dead.test", "A", DEAD)
    made.dead_sender = made.user(a, "alpha.test")
    submit(made, made.dead_sender, ["someone@dead.test"], "never arrives")
    yield made
    _stop_server(a, a_pg, a_dir)
    _stop_server(b, b_pg, b_dir)


def submit(pair: Pair, sender: User, rcpts: list[str], subject: str) -> None:
    client = smtplib.SMTP(pair.a.host, pair.a.port("submission"), timeout=30)
    try:
        client.ehlo("client.test")
        client.login(sender.address, sender.password)
        client.sendmail(sender.address, rcpts, message(sender.address, rcpts[0], subject=subject))
    finally:
        client.quit()


def wait_for(server, user: User, predicate, timeout: float = 30.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        found = [raw for raw in mailbox(server, user) if predicate(raw)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def subject(text: str):
    return lambda raw: f"Subject: {text}".encode() in raw


def queue_of(server, rcpt: str | None = None):
    items = server.admin.run(server.admin.store.list_outbound())
    return tuple(i for i in items if rcpt is None or rcpt in i.recipients)


def wait_for_attempt(server, rcpt: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(i.attempts for i in queue_of(server, rcpt)):
        time.sleep(0.1)


def auth_results(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    found = re.findall(r"(?im)^Authentication-Results:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head)
    return " ".join(" ".join(f.split()) for f in found)


def dsn_groups(dsn: bytes) -> list[dict[str, str]]:
    parsed = message_from_bytes(dsn)
    status = [p for p in parsed.walk() if p.get_content_type() == "message/delivery-status"][0]
    return [dict(group.items()) for group in status.get_payload()[1:]]


def test_submitted_mail_reaches_b_signed_and_authenticated(pair):
    alice, bob = pair.user(pair.a, "alpha.test"), pair.user(pair.b, "beta.test")
    submit(pair, alice, [bob.address], "first contact")
    [raw] = wait_for(pair.b, bob, subject("first contact"))
    assert b"DKIM-Signature:" in raw and b"d=alpha.test" in raw
    assert b"by mx.beta.test (Casella) with ESMTPS" in raw  # opportunistic STARTTLS (RFC 3207, 7435)
    results = auth_results(raw)
    assert results.startswith("mx.beta.test;")
    assert "spf=pass" in results and "dkim=pass" in results and "dmarc=pass" in results, results
    assert queue_of(pair.a, bob.address) == ()


def test_temporary_failure_then_success(pair, dns):
    alice = pair.user(pair.a, "alpha.test")
    carol = pair.user(pair.b, "gamma.test")
    dns.set("gamma.test", "MX", (10, "mx.gamma.test"))
    dns.set("mx.gamma.test", "A", DEAD)
    submit(pair, alice, [carol.address], "retry me")
    wait_for_attempt(pair.a, carol.address)
    [item] = queue_of(pair.a, carol.address)
    assert "connection to mx.gamma.test" in item.last_error
    dns.set("mx.gamma.test", "A", "127.0.0.1")
    pair.a.daemon.cli("queue", "retry", str(item.id))
    assert len(wait_for(pair.b, carol, subject("retry me"))) == 1
    assert wait_for(pair.a, alice, subject("Undelivered"), timeout=0.5) == []


def test_permanent_failure_bounces_to_sender(pair):
    alice = pair.user(pair.a, "alpha.test")
    submit(pair, alice, ["nobody-here@beta.test"], "to nobody")
    [dsn] = wait_for(pair.a, alice, subject("Undelivered Mail Returned to Sender"))
    [group] = dsn_groups(dsn)
    assert group["Final-Recipient"] == "rfc822; nobody-here@beta.test"
    assert (group["Action"], group["Status"]) == ("failed", "5.1.1")
    assert group["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert b"Subject: to nobody" in dsn  # the original header, as text/rfc822-headers
    assert queue_of(pair.a, "nobody-here@beta.test") == ()


def test_restart_of_a_in_the_middle_delivers_once(pair, dns):
    alice = pair.user(pair.a, "alpha.test")
    dave = pair.user(pair.b, "gamma.test")
    dns.set("gamma.test", "MX", (10, "mx2.gamma.test"))
    dns.set("mx2.gamma.test", "A", DEAD)
    submit(pair, alice, [dave.address], "survives restart")
    wait_for_attempt(pair.a, dave.address)
    assert queue_of(pair.a, dave.address)
    pair.restart_a()
    dns.set("mx2.gamma.test", "A", "127.0.0.1")
    assert len(wait_for(pair.b, dave, subject("survives restart"))) == 1
    time.sleep(1.5)  # a second delivery, if any, would have happened by now
    assert len(mailbox(pair.b, dave)) == 1
    assert queue_of(pair.a, dave.address) == ()


def test_forged_dkim_signature_fails(pair):
    bob = pair.user(pair.b, "beta.test")
    signed = DkimSigner(pair.key_dir).sign_sync(message("x@alpha.test", bob.address, subject="forged"),
                                                 "alpha.test") + message("x@alpha.test", bob.address,
                                                                         subject="forged", body="Changed.\r\n")
    client = smtplib.SMTP(pair.b.host, pair.b.port("smtp"), timeout=30)
    try:
        client.sendmail("x@alpha.test", [bob.address], signed)
    finally:
        client.quit()
    [raw] = wait_for(pair.b, bob, subject("forged"))
    results = auth_results(raw)
    # SPF still passes (127.0.0.1 is allowed) and aligns, so DMARC passes; the signature does not.
    assert "dkim=fail" in results and "spf=pass" in results, results


def test_dmarc_reject_is_550_and_forged_results_are_removed(pair):
    bob = pair.user(pair.b, "beta.test")
    client = smtplib.SMTP(pair.b.host, pair.b.port("smtp"), timeout=30)
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("ceo@strict.test", [bob.address], message("ceo@strict.test", bob.address))
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error.startswith(b"5.7.1")
        forged = b"Authentication-Results: mx.beta.test; dkim=pass; spf=pass; dmarc=pass\r\n" + \
            message("x@alpha.test", bob.address, subject="pre-forged")
        client.sendmail("x@alpha.test", [bob.address], forged)
    finally:
        client.quit()
    [raw] = wait_for(pair.b, bob, subject("pre-forged"))
    assert raw.count(b"Authentication-Results:") == 1
    assert "dkim=none" in auth_results(raw)


def test_dmarc_quarantine_files_into_junk(pair):
    bob = pair.user(pair.b, "beta.test")
    client = smtplib.SMTP(pair.b.host, pair.b.port("smtp"), timeout=30)
    try:
        client.sendmail("ceo@quar.test", [bob.address], message("ceo@quar.test", bob.address, subject="quarantined"))
    finally:
        client.quit()
    [raw] = [m for m in mailbox(pair.b, bob, "Junk") if b"Subject: quarantined" in m]
    assert "dmarc=fail" in auth_results(raw) and "spf=fail" in auth_results(raw)
    assert mailbox(pair.b, bob) == []


def test_queue_cli_show_retry_delete(pair, dns):
    # On B: default lifetime (5 days) and retry delay (5 minutes), so the item stays put while the CLI runs.
    bella = pair.user(pair.b, "beta.test")
    dns.set("held.test", "MX", (10, "mx.held.test"))
    dns.set("mx.held.test", "A", DEAD)
    client = smtplib.SMTP(pair.b.host, pair.b.port("submission"), timeout=30)
    try:
        client.ehlo("client.test")
        client.login(bella.address, bella.password)
        client.sendmail(bella.address, ["x@held.test", "y@held.test"], message(bella.address, "x@held.test"))
    finally:
        client.quit()
    wait_for_attempt(pair.b, "x@held.test")
    [item] = queue_of(pair.b, "x@held.test")
    listing = pair.b.daemon.cli("queue", "list").stdout
    assert f"{item.id} " in listing and "x@held.test" in listing
    shown = pair.b.daemon.cli("queue", "show", str(item.id)).stdout
    assert "x@held.test  pending" in shown and "y@held.test  pending" in shown and "connection to" in shown
    assert "1 item(s) due now" in pair.b.daemon.cli("queue", "retry", str(item.id)).stdout
    assert "deleted" in pair.b.daemon.cli("queue", "delete", str(item.id)).stdout
    assert all(i.id != item.id for i in queue_of(pair.b))
    missing = pair.b.daemon.cli("queue", "show", str(item.id), check=False)
    assert missing.returncode != 0 and "no queued message" in missing.stderr


def test_unreachable_until_lifetime_then_bounce(pair):
    """Last on purpose: the message was submitted when the pair started (fixture)."""
    [dsn] = wait_for(pair.a, pair.dead_sender, subject("Undelivered Mail Returned to Sender"), timeout=LIFETIME + 30)
    [group] = dsn_groups(dsn)
    assert group["Final-Recipient"] == "rfc822; someone@dead.test"
    assert (group["Action"], group["Status"]) == ("failed", "4.4.7")  # RFC 3463: delivery time expired
    assert "connection to mx.dead.test" in group["Diagnostic-Code"]
