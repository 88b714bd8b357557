"""SMTP policy with production settings (no dev catch-all, no plaintext AUTH even on loopback):
relay refusal, unknown users, the outbound queue, aliases, quota, AUTH only over TLS, 50
concurrent senders, and the same seen through swaks. SQLite and PostgreSQL."""
from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

if __package__:
    from .conftest import BACKENDS, TEST_DOMAIN, _start_server, _stop_server
    from .test_smtp_support import STRICT_ENV, Raw, body_of, mailbox, message, mx, submission, submissions
else:
    from conftest import BACKENDS, TEST_DOMAIN, _start_server, _stop_server
    from test_smtp_support import STRICT_ENV, Raw, body_of, mailbox, message, mx, submission, submissions


@pytest.fixture(scope="module", params=BACKENDS)
def strict(request):
    # 50 concurrent senders come from one address: allow them here; test_smtp_limits crosses the limit.
    srv, pg_url, workdir = _start_server(request.param, {**STRICT_ENV, "CASELLA_SMTP__MAX_CONNECTIONS_PER_IP": "200"})
    yield srv
    log = srv.daemon.log_text()
    _stop_server(srv, pg_url, workdir)
    assert "Traceback" not in log  # every error path gave a reply, none crashed the session


@pytest.fixture
def account(strict):
    return strict.new_user()


def test_unknown_local_user_is_550(strict, account):
    with mx(strict) as client:
        client.ehlo("mta.test")
        client.mail("a@remote.test")
        code, text = client.rcpt(f"nobody-here@{TEST_DOMAIN}")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt(account.address)[0] == 250  # the transaction goes on


def test_mx_is_not_an_open_relay(strict):
    with mx(strict) as client:
        client.ehlo("mta.test")
        client.mail("a@remote.test")
        code, text = client.rcpt("victim@elsewhere.test")
        assert (code, text[:5]) == (554, b"5.7.1")
        # Even with a local sender, even after STARTTLS.
        client.rset()
        client.starttls(context=__import__("ssl")._create_unverified_context())
        client.ehlo("mta.test")
        client.mail(f"someone@{TEST_DOMAIN}")
        assert client.rcpt("victim@elsewhere.test")[0] == 554
    outbound = strict.admin.run(strict.admin.store.list_outbound())
    assert not any("victim@elsewhere.test" in item.recipients for item in outbound)


def test_submission_queues_remote_and_delivers_local_in_one_go(strict, account):
    other = strict.new_user()
    raw = message(account.address, "friend@elsewhere.test", "mixed")
    with submission(strict, account) as client:
        client.sendmail(account.address, ["friend@elsewhere.test", other.address, "two@elsewhere.test"], raw)
    [stored] = mailbox(strict, other)
    assert body_of(stored) == raw
    items = [i for i in strict.admin.run(strict.admin.store.list_outbound()) if i.mail_from == account.address]
    assert len(items) == 1
    assert sorted(items[0].recipients) == ["friend@elsewhere.test", "two@elsewhere.test"]
    assert mailbox(strict, account) == []


def test_unauthenticated_submission_cannot_relay(strict, account):
    with submission(strict) as client:
        assert client.mail(account.address)[0] == 530
        assert client.rcpt("victim@elsewhere.test")[0] == 503


def test_aliases_plus_addressing_and_domain_catch_all(strict, account):
    store = strict.admin.store
    local, domain = account.address.split("@")
    strict.admin.run(store.add_alias(f"alias-{local}@{domain}", account.address))
    if not strict.admin.run(store.is_local_domain("catch.test")):
        strict.admin.run(store.add_domain("catch.test"))
    strict.admin.run(store.set_catchall("catch.test", account.address))
    targets = [f"alias-{local}@{domain}", f"{local}+news@{domain}", "anything@catch.test"]
    with mx(strict) as client:
        for target in targets:
            client.sendmail("a@remote.test", [target], message("a@remote.test", target, target))
    stored = mailbox(strict, account)
    assert [re.search(rb"Subject: (\S+)", m).group(1).decode() for m in stored] == targets
    # An owned alias is a valid MAIL FROM on submission.
    with submission(strict, account) as client:
        assert client.mail(f"alias-{local}@{domain}")[0] == 250


def test_over_quota(strict):
    small = strict.new_user(quota_bytes=2000)
    roomy = strict.new_user()
    big = message("a@remote.test", small.address, "big", ("x" * 70 + "\r\n") * 40)
    with mx(strict) as client:
        client.ehlo("mta.test")
        client.mail("a@remote.test")
        client.rcpt(small.address)
        code, text = client.data(big)
        assert (code, text[:5]) == (452, b"4.2.2")  # nothing stored for anyone: a temporary failure
        # With another recipient the message is accepted, and stored for the one with room.
        client.mail("a@remote.test")
        client.rcpt(small.address)
        client.rcpt(roomy.address)
        assert client.data(big)[0] == 250
    assert mailbox(strict, small) == []
    assert len(mailbox(strict, roomy)) == 1


def test_auth_only_over_tls(strict, account):
    with submission(strict, tls=False) as client:
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH PLAIN AGZvbwBiYXI=")
        assert (code, text[:6]) == (538, b"5.7.11")  # RFC 4954 §6
        client.starttls(context=__import__("ssl")._create_unverified_context())
        client.ehlo("client.test")
        assert client.has_extn("auth") and "PLAIN" in client.esmtp_features["auth"]
        client.login(account.address, account.password)
    with submissions(strict, account) as client:
        assert "LOGIN" in client.esmtp_features["auth"]


def test_auth_state_is_forgotten_by_starttls(strict, account):
    raw = Raw(strict, "submission")
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"STARTTLS").startswith(b"220")
    raw.sock = __import__("ssl")._create_unverified_context().wrap_socket(raw.sock)
    raw.cmd(b"EHLO client.test")
    import base64

    token = base64.b64encode(f"\0{account.address}\0{account.password}".encode())
    assert raw.cmd(b"AUTH PLAIN " + token).startswith(b"235 2.7.0")
    assert raw.cmd(b"AUTH PLAIN " + token).startswith(b"503 5.5.1")
    raw.close()


def test_fifty_concurrent_senders_lose_nothing(strict):
    users = [strict.new_user() for _ in range(5)]

    def send(index: int) -> list[str]:
        sent = []
        with mx(strict) as client:
            for n in range(4):
                target = users[(index + n) % len(users)]
                subject = f"c{index}-{n}"
                client.sendmail("a@remote.test", [target.address], message("a@remote.test", target.address, subject))
                sent.append(subject)
        return sent

    with ThreadPoolExecutor(50) as pool:
        subjects = [s for batch in pool.map(send, range(50)) for s in batch]
    stored = [m for u in users for m in mailbox(strict, u)]
    found = sorted(re.search(rb"Subject: (\S+)", m).group(1).decode() for m in stored)
    assert found == sorted(subjects) and len(found) == 200
    # Every UID in each INBOX is distinct and the store agrees with what was acknowledged.
    for u in users:
        snapshot = strict.admin.run(strict.admin.store.select(u.id, "INBOX", readonly=True))
        uids = [m.uid for m in snapshot.messages]
        assert len(uids) == len(set(uids)) == 40


# ---------------------------------------------------------------- swaks

swaks_missing = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (.ci/run installs it)")


def swaks(server, port_name: str, *args: str) -> subprocess.CompletedProcess:
    command = ["swaks", "--server", server.host, "--port", str(server.port(port_name)), "--timeout", "20",
               "--ehlo", "swaks.test", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@swaks_missing
def test_swaks_mx_delivery(strict, account):
    result = swaks(strict, "smtp", "--from", "a@remote.test", "--to", account.address,
                   "--header", "Subject: via swaks")
    assert result.returncode == 0, result.stdout
    assert re.search(r"<~?-? +250 2\.0\.0 OK: message \w+ accepted", result.stdout)
    [stored] = mailbox(strict, account)
    assert b"Subject: via swaks" in stored and b"Received: from swaks.test" in stored


@swaks_missing
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth_on_submission(strict, account, mechanism):
    other = strict.new_user()
    result = swaks(strict, "submission", "--tls", "--auth", mechanism, "--auth-user", account.address,
                   "--auth-password", account.password, "--from", account.address, "--to", other.address)
    assert result.returncode == 0, result.stdout
    assert "235 2.7.0" in result.stdout
    [stored] = mailbox(strict, other)
    assert b"with ESMTPSA" in stored


@swaks_missing
def test_swaks_implicit_tls(strict, account):
    result = swaks(strict, "submissions", "--tls-on-connect", "--auth", "PLAIN", "--auth-user", account.address,
                   "--auth-password", account.password, "--from", account.address, "--to", account.address)
    assert result.returncode == 0, result.stdout
    assert len(mailbox(strict, account)) == 1


@swaks_missing
def test_swaks_relay_refused(strict):
    result = swaks(strict, "smtp", "--from", "a@remote.test", "--to", "victim@elsewhere.test")
    assert result.returncode != 0
    assert "554 5.7.1" in result.stdout


@swaks_missing
def test_swaks_wrong_password(strict, account):
    result = swaks(strict, "submission", "--tls", "--auth", "LOGIN", "--auth-user", account.address,
                   "--auth-password", "not-the-password", "--from", account.address, "--to", account.address)
    assert result.returncode != 0
    assert "535 5.7.8" in result.stdout
    assert mailbox(strict, account) == []


def test_over_quota_recipient_of_accepted_message_is_bounced(strict):
    sender = strict.new_user()
    small = strict.new_user(quota_bytes=2000)
    roomy = strict.new_user()
    big = message(sender.address, small.address, "partly", ("x" * 70 + "\r\n") * 40)
    with submission(strict, sender) as client:
        client.sendmail(sender.address, [small.address, roomy.address], big)
    assert len(mailbox(strict, roomy)) == 1 and mailbox(strict, small) == []
    [notice] = mailbox(strict, sender)
    assert b"Content-Type: multipart/report; report-type=delivery-status" in notice
    assert f"Final-Recipient: rfc822; {small.address}".encode() in notice
    assert b"Status: 5.2.2" in notice and b"Subject: partly" in notice
    assert roomy.address.encode() not in notice.split(b"message/delivery-status")[1].split(b"rfc822-headers")[0]
    # From a remote sender the notice goes to the outbound queue with a null reverse-path.
    with mx(strict) as client:
        client.sendmail("someone@elsewhere.test", [small.address, roomy.address], big)
    queued = [i for i in strict.admin.run(strict.admin.store.list_outbound())
              if i.recipients == ("someone@elsewhere.test",)]
    assert len(queued) == 1 and queued[0].mail_from == ""


def test_new_account_reachable_at_once(strict):
    """Only positive resolutions are cached: a 550 never outlives the account's creation."""
    address = f"late-{__import__('uuid').uuid4().hex[:8]}@{TEST_DOMAIN}"
    with mx(strict) as client:
        client.ehlo("mta.test")
        client.mail("a@remote.test")
        assert client.rcpt(address)[0] == 550
        strict.admin.run(strict.admin.store.add_account(address, "a-long-password"))
        assert client.rcpt(address)[0] == 250
        assert client.data(message("a@remote.test", address, "late"))[0] == 250


def test_bare_postmaster(strict, account):
    """RFC 5321 §4.5.1: <Postmaster> without a domain is accepted (here: postmaster@server.hostname)."""
    store = strict.admin.store
    if not strict.admin.run(store.is_local_domain("localhost")):
        strict.admin.run(store.add_domain("localhost"))
    strict.admin.run(store.add_alias("postmaster@localhost", account.address))
    with mx(strict) as client:
        client.ehlo("mta.test")
        client.mail("a@remote.test")
        assert client.rcpt("<Postmaster>")[0] == 250
        assert client.data(message("a@remote.test", "postmaster", "to postmaster"))[0] == 250
    [stored] = mailbox(strict, account)
    assert b"for <postmaster@localhost>;" in stored
