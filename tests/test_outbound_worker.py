"""The delivery worker in-process, against aiosmtpd sinks and the loopback DNS, on both backends.

Routing (MX, implicit MX, null MX, NXDOMAIN, transport map, smart host with
AUTH), per-recipient outcomes, retries with backoff, bounces and delayed
notices (RFC 3464), lifetime expiry, DKIM signing, and exclusive claims.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from email import message_from_bytes

import pytest

from config import load_settings
from server.mailauth.dkim import DkimSigner, generate_key, verify_dkim
from server.mailauth.dns import Resolver
from pytest_casella import free_port
from server.outbound import OutboundWorker

if __package__:
    from .test_outbound_support import DnsServer, Sink, SinkHandler, message
else:
    from test_outbound_support import DnsServer, Sink, SinkHandler, message

SENDER = "alice@alpha.test"
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def dns():
    server = DnsServer()
    server.set("beta.test", "MX", (10, "mx1.beta.test"), (20, "mx2.beta.test"))
    server.set("mx1.beta.test", "A", "127.0.0.1")
    server.set("mx2.beta.test", "A", "127.0.0.1")
    server.set("gamma.test", "MX", (10, "mx.gamma.test"))
    server.set("mx.gamma.test", "A", "127.0.0.1")
    server.set("implicit.test", "A", "127.0.0.1")  # no MX: the domain is its own MX
    server.set("nullmx.test", "MX", (0, "."))
    server.set("tempfail.test", "A", "127.0.0.1")
    server.servfail.add("tempfail.test")
    yield server
    server.stop()


@pytest.fixture
async def sink():
    started = await Sink().start()
    yield started
    await started.stop()


@pytest.fixture
async def sender(store):
    await store.add_domain("alpha.test")
    return await store.add_account(SENDER, PASSWORD)


def make_worker(store, dns, tmp_path, port: int, **outbound) -> OutboundWorker:
    config = {"smtp_port": port, "retry_initial_seconds": 60, "connect_timeout": 3, "command_timeout": 5,
              "starttls": False, **outbound}
    settings = load_settings(overrides={
        "server": {"hostname": "mail.alpha.test"}, "outbound": config,
        "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 2},
        "dkim": {"key_dir": str(tmp_path / "dkim")}})
    return OutboundWorker(store, settings, Resolver.from_settings(settings.dns),
                          DkimSigner(tmp_path / "dkim"), worker_id="test-worker")


async def queue(store, *rcpts: str, sender: str = SENDER, size: int = 0) -> int:
    report = await store.deliver(message(sender, rcpts[0], size=size), [], outbound_from=sender,
                                 outbound_to=list(rcpts))
    return report.queue_id


async def inbox(store, account_id: int) -> list[bytes]:
    snapshot = await store.select(account_id, "INBOX", readonly=True)
    fetched = await store.fetch(account_id, snapshot.mailbox.id, [m.uid for m in snapshot.messages], raw=True)
    return [f.raw for f in fetched]


def report_fields(dsn: bytes) -> list[dict[str, str]]:
    """The per-recipient groups of the message/delivery-status part."""
    parsed = message_from_bytes(dsn)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    status = [p for p in parsed.walk() if p.get_content_type() == "message/delivery-status"][0]
    groups = status.get_payload()
    return [dict(g.items()) for g in groups[1:]]


async def test_mx_delivery_signed_and_queue_emptied(store, dns, sink, sender, tmp_path):
    _, record = generate_key(tmp_path / "dkim", "alpha.test", "sel", "rsa-sha256", 1024)
    dns.set("sel._domainkey.alpha.test", "TXT", record)
    worker = make_worker(store, dns, tmp_path, sink.port)
    await queue(store, "bob@beta.test", "carol@beta.test", "dave@gamma.test")
    assert await worker.run_once() == 1
    assert len(sink.received) == 2  # one transaction per domain
    by_rcpts = sorted(sink.received, key=lambda r: len(r.rcpt_tos))
    assert by_rcpts[0].rcpt_tos == ["dave@gamma.test"]
    assert sorted(by_rcpts[1].rcpt_tos) == ["bob@beta.test", "carol@beta.test"]
    assert by_rcpts[1].mail_from == SENDER
    results = await verify_dkim(Resolver(["127.0.0.1"], dns.port, 2), by_rcpts[1].data)
    assert [r.result for r in results] == ["pass"]
    assert await store.list_outbound() == ()


async def test_implicit_mx_null_mx_and_missing_domain(store, dns, sink, sender, tmp_path):
    worker = make_worker(store, dns, tmp_path, sink.port)
    await queue(store, "x@implicit.test", "y@nullmx.test", "z@nosuch.test")
    await worker.run_once()
    assert [r.rcpt_tos for r in sink.received] == [["x@implicit.test"]]
    [dsn] = await inbox(store, sender.id)
    statuses = {g["Final-Recipient"]: g["Status"] for g in report_fields(dsn)}
    assert statuses == {"rfc822; y@nullmx.test": "5.1.10", "rfc822; z@nosuch.test": "5.1.2"}  # RFC 7505, 3463
    assert b"Subject: Undelivered Mail Returned to Sender" in dsn
    assert await store.list_outbound() == ()


async def test_temporary_failure_retried_with_backoff_then_delivered(store, dns, sink, sender, tmp_path):
    sink.handler.rcpt_rules["bob@beta.test"] = ["451 4.3.0 try later", "250 OK"]
    worker = make_worker(store, dns, tmp_path, sink.port, retry_initial_seconds=120, retry_factor=3)
    queue_id = await queue(store, "bob@beta.test")
    before = datetime.now(timezone.utc)
    await worker.run_once()
    [item] = await store.list_outbound()
    assert item.attempts == 1 and "451 4.3.0" in item.last_error
    assert timedelta(seconds=110) < item.next_attempt_at - before < timedelta(seconds=130)
    assert await worker.run_once() == 0  # not due yet
    assert worker.backoff(1) == 360 and worker.backoff(10) == worker.config.retry_max_seconds
    assert await store.retry_outbound(queue_id) == 1
    await worker.run_once()
    assert [r.rcpt_tos for r in sink.received] == [["bob@beta.test"]]
    assert await store.list_outbound() == ()
    assert await inbox(store, sender.id) == []  # no DSN for a success


async def test_permanent_failure_bounces_only_that_recipient(store, dns, sink, sender, tmp_path):
    sink.handler.rcpt_rules["nobody@beta.test"] = ["550 5.1.1 no such user here"]
    worker = make_worker(store, dns, tmp_path, sink.port)
    await queue(store, "bob@beta.test", "nobody@beta.test")
    await worker.run_once()
    assert [r.rcpt_tos for r in sink.received] == [["bob@beta.test"]]
    [dsn] = await inbox(store, sender.id)
    [group] = report_fields(dsn)
    assert group["Final-Recipient"] == "rfc822; nobody@beta.test"
    assert (group["Action"], group["Status"]) == ("failed", "5.1.1")
    assert group["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"
    assert group["Remote-MTA"] == "dns; mx1.beta.test"
    assert b"Content-Type: text/rfc822-headers" in dsn and b"Subject: hello" in dsn
    assert b"Auto-Submitted: auto-replied" in dsn
    assert await store.list_outbound() == ()


async def test_second_mx_used_when_first_refuses_connections(store, dns, sink, sender, tmp_path):
    dns.set("twomx.test", "MX", (10, "dead.twomx.test"), (20, "live.twomx.test"))
    dns.set("dead.twomx.test", "A", "127.0.0.2")  # nothing listens on 127.0.0.2
    dns.set("live.twomx.test", "A", "127.0.0.1")
    worker = make_worker(store, dns, tmp_path, sink.port)
    await queue(store, "x@twomx.test")
    await worker.run_once()
    assert [r.rcpt_tos for r in sink.received] == [["x@twomx.test"]]


async def test_unreachable_until_lifetime_then_expired_dsn(store, dns, sender, tmp_path):
    worker = make_worker(store, dns, tmp_path, free_port(), lifetime_seconds=1.0, retry_initial_seconds=0.2,
                         delayed_notice_seconds=1000)
    await queue(store, "bob@beta.test")
    await worker.run_once()
    [item] = await store.list_outbound()
    assert "connection to mx2.beta.test" in item.last_error  # every MX tried, the last one reported and item.attempts == 1
    await asyncio.sleep(1.1)
    await worker.run_once()
    assert await store.list_outbound() == ()
    [dsn] = await inbox(store, sender.id)
    [group] = report_fields(dsn)
    assert (group["Action"], group["Status"]) == ("failed", "4.4.7")  # RFC 3463: delivery time expired
    assert "connection to" in group["Diagnostic-Code"]


async def test_delayed_notice_sent_once(store, dns, sender, tmp_path):
    worker = make_worker(store, dns, tmp_path, free_port(), delayed_notice_seconds=0.01, retry_initial_seconds=0.01)
    queue_id = await queue(store, "bob@beta.test")
    await asyncio.sleep(0.05)
    await worker.run_once()
    await asyncio.sleep(0.05)
    await worker.run_once()
    [dsn] = await inbox(store, sender.id)
    [group] = report_fields(dsn)
    assert group["Action"] == "delayed" and group["Status"].startswith("4.") and "Will-Retry-Until" in group
    assert b"Subject: Delayed Mail" in dsn
    assert (await store.get_outbound(queue_id)).delayed_notice_sent


async def test_null_sender_never_bounced_and_remote_sender_gets_queued_dsn(store, dns, sink, sender, tmp_path):
    sink.handler.rcpt_rules["nobody@beta.test"] = ["550 5.1.1 no"]
    worker = make_worker(store, dns, tmp_path, sink.port)
    await store.deliver(message("MAILER-DAEMON@alpha.test", "nobody@beta.test"), [], outbound_from="",
                        outbound_to=["nobody@beta.test"])
    await worker.run_once()
    assert await store.list_outbound() == ()  # RFC 5321 §4.5.5: no bounce of a bounce
    # A remote sender (an alias forward, say) gets its DSN through the queue, with a null sender.
    await queue(store, "nobody@beta.test", sender="someone@gamma.test")
    await worker.run_once()
    [item] = await store.list_outbound()
    assert item.mail_from == "" and item.recipients == ("someone@gamma.test",)
    await worker.run_once()
    dsn = sink.received[-1]
    assert dsn.mail_from == "<>" and dsn.rcpt_tos == ["someone@gamma.test"]
    assert b"multipart/report" in dsn.data


async def test_dns_failure_is_temporary(store, dns, sender, tmp_path):
    worker = make_worker(store, dns, tmp_path, free_port())
    await queue(store, "x@tempfail.test")
    await worker.run_once()
    [item] = await store.list_outbound()
    assert item.attempts == 1 and "MX lookup" in item.last_error
    assert await inbox(store, sender.id) == []


async def test_transport_map_overrides_mx(store, dns, sink, sender, tmp_path):
    worker = make_worker(store, dns, tmp_path, free_port(),
                         transport_map={"nosuch.test": f"[127.0.0.1]:{sink.port}"})
    await queue(store, "x@nosuch.test")
    await worker.run_once()
    assert [r.rcpt_tos for r in sink.received] == [["x@nosuch.test"]]


async def test_smart_host_with_auth(store, dns, sender, tmp_path):
    from aiosmtpd.smtp import AuthResult

    logins = []

    def authenticator(server, session, envelope, mechanism, data):
        logins.append((mechanism, data.login, data.password))
        return AuthResult(success=data.password == b"relay-secret")

    handler = SinkHandler()
    relay = await Sink(handler, authenticator=authenticator, auth_require_tls=False).start()
    try:
        worker = make_worker(store, dns, tmp_path, free_port(), smart_host={
            "host": "127.0.0.1", "port": relay.port, "tls": "none", "username": "relay-user",
            "password": "relay-secret"})
        await queue(store, "x@beta.test", "y@gamma.test", "z@nosuch.test")
        await worker.run_once()
        assert len(relay.received) == 1  # everything in one transaction through the smart host
        assert sorted(relay.received[0].rcpt_tos) == ["x@beta.test", "y@gamma.test", "z@nosuch.test"]
        assert logins and logins[0][1:] == (b"relay-user", b"relay-secret")
    finally:
        await relay.stop()


async def test_two_workers_never_claim_the_same_item(store, dns, sink, sender, tmp_path):
    for n in range(20):
        await queue(store, f"r{n}@beta.test")
    first = make_worker(store, dns, tmp_path, sink.port)
    second = make_worker(store, dns, tmp_path, sink.port)
    second.worker_id = "other-worker"
    claims = await asyncio.gather(
        *(store.claim_outbound(w.worker_id, 7, 60) for w in (first, second, first, second)))
    ids = [c.id for batch in claims for c in batch]
    assert len(ids) == len(set(ids)) == 20
    assert await store.claim_outbound("third", 10, 60) == ()
    assert await store.release_outbound("test-worker") > 0
    assert await store.claim_outbound("third", 50, 60) != ()
    # A stale holder cannot record over the new owner.
    item = ids[0]
    owner = (await store.get_outbound(item)).locked_by
    stranger = "test-worker" if owner != "test-worker" else "nobody"
    assert await store.record_outbound_attempt(item, stranger, [], retry_at=None, error=None) == -1


async def test_running_worker_delivers_and_closes_cleanly(store, dns, sink, sender, tmp_path):
    worker = make_worker(store, dns, tmp_path, sink.port, poll_interval=0.1)
    worker.start()
    try:
        await queue(store, "bob@beta.test", size=4096)
        worker.wake()
        for _ in range(100):
            if sink.received:
                break
            await asyncio.sleep(0.05)
        assert [r.rcpt_tos for r in sink.received] == [["bob@beta.test"]]
    finally:
        await worker.close(2)
    for _ in range(20):
        if await store.list_outbound() == ():
            break
        await asyncio.sleep(0.05)
    assert await store.list_outbound() == ()


async def test_connection_reused_for_the_next_message_then_closed(store, dns, sink, sender, tmp_path):
    worker = make_worker(store, dns, tmp_path, sink.port, connection_cache_seconds=30)
    await queue(store, "bob@beta.test")
    await worker.run_once()
    await queue(store, "carol@beta.test")
    await worker.run_once()
    assert [r.rcpt_tos for r in sink.received] == [["bob@beta.test"], ["carol@beta.test"]]
    assert sink.handler.ehlos == 1 and worker.connections.reused == 1
    await worker.close(2)  # QUITs the idle connection
    uncached = make_worker(store, dns, tmp_path, sink.port, connection_cache_seconds=0)
    for rcpt in ("dave@beta.test", "erin@beta.test"):
        await queue(store, rcpt)
        await uncached.run_once()
    assert sink.handler.ehlos == 3 and uncached.connections.reused == 0


async def test_lease_renewed_during_a_slow_delivery(store, dns, sender, tmp_path):
    class SlowHandler(SinkHandler):
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            await asyncio.sleep(3.0)
            return await super().handle_DATA(server, session, envelope)

    slow = await Sink(SlowHandler()).start()
    try:
        worker = make_worker(store, dns, tmp_path, slow.port, lease_seconds=1.2)
        await queue(store, "bob@beta.test")
        task = asyncio.ensure_future(worker.run_once())
        await asyncio.sleep(2.0)  # past the first lease: renewed, so nobody else may claim it
        assert await store.claim_outbound("other-worker", 10, 60) == ()
        await task
        assert [r.rcpt_tos for r in slow.received] == [["bob@beta.test"]]
        assert await store.list_outbound() == ()
    finally:
        await slow.stop()


async def test_two_stores_two_workers_deliver_each_message_once(store, database_url, dns, sink, sender, tmp_path):
    """As two casella processes on one database: separate engines, both workers running."""
    from storage import MailStore

    other_store = await MailStore.open(database_url, auth_cache_seconds=0)
    try:
        for n in range(30):
            await queue(store, f"r{n}@beta.test")
        first = make_worker(store, dns, tmp_path, sink.port, poll_interval=0.05, concurrency=5)
        second = make_worker(other_store, dns, tmp_path, sink.port, poll_interval=0.05, concurrency=5)
        second.worker_id = "second-worker"
        first.start()
        second.start()
        for _ in range(400):
            if len(sink.received) >= 30 and await store.list_outbound() == ():
                break
            await asyncio.sleep(0.05)
        await asyncio.gather(first.close(2), second.close(2))
        delivered = sorted(r for received in sink.received for r in received.rcpt_tos)
        assert delivered == sorted(f"r{n}@beta.test" for n in range(30))  # each exactly once
        assert first.delivered and second.delivered  # both took part
    finally:
        await other_store.close()


async def test_crashed_workers_lease_expires_then_another_delivers(store, dns, sink, sender, tmp_path):
    await queue(store, "bob@beta.test")
    assert len(await store.claim_outbound("crashed-worker", 10, 0.3)) == 1  # then it "dies"
    worker = make_worker(store, dns, tmp_path, sink.port)
    assert await worker.run_once() == 0  # still leased
    await asyncio.sleep(0.4)
    assert await worker.run_once() == 1
    assert [r.rcpt_tos for r in sink.received] == [["bob@beta.test"]]
    assert await store.list_outbound() == ()


async def test_items_finished_together_free_only_unreferenced_content(store, sender):
    from sqlalchemy import func, select

    from storage.models import MessageRow

    async def count_contents() -> int:
        return await store.db.read(lambda s: s.scalar(select(func.count()).select_from(MessageRow)))

    for n in range(6):
        await queue(store, f"r{n}@beta.test")
    # One message for a local mailbox and a remote recipient: its content outlives the queue item.
    local = await store.deliver(message(SENDER, "x@beta.test"), [sender.id], outbound_from=SENDER,
                                outbound_to=["x@beta.test"])
    claims = await store.claim_outbound("test-worker", 10, 60)
    assert len(claims) == 7
    ids = [c.id for c in claims]
    # All finished at once (one group-commit batch), one of them by a worker without the lease.
    done = await asyncio.gather(store.finish_outbound(ids[0], "stranger"),
                                *(store.finish_outbound(qid, "test-worker") for qid in ids[1:]),
                                store.finish_outbound(ids[1], "test-worker"))
    assert done == [False] + [True] * 6 + [False]
    assert [item.id for item in await store.list_outbound()] == [ids[0]]
    kept = 2 if ids[0] != local.queue_id else 1  # the unfinished item's content, and the local one
    assert await count_contents() == kept
    assert (await store.mailbox_status(sender.id, "INBOX")).messages == 1


async def test_messages_queued_together_keep_their_own_recipients_and_content(store, sender):
    bodies = [message(SENDER, f"r{n}@beta.test", subject=f"queued {n}") for n in range(12)]
    reports = await asyncio.gather(*(
        store.deliver(bodies[n], [sender.id] if n % 3 == 0 else [], outbound_from=SENDER,
                      outbound_to=[f"r{n}@beta.test"] + ([f"s{n}@gamma.test"] if n % 2 else []))
        for n in range(12)))
    assert len({r.queue_id for r in reports}) == 12
    for n, report in enumerate(reports):
        item = await store.get_outbound(report.queue_id)
        expected = [f"r{n}@beta.test"] + ([f"s{n}@gamma.test"] if n % 2 else [])
        assert [r.address for r in item.recipients] == expected
        assert [r.domain for r in item.recipients] == [a.rpartition("@")[2] for a in expected]
        assert (item.mail_from, item.content_id, item.attempts) == (SENDER, report.content_id, 0)
        assert await store.outbound_content(report.queue_id) == bodies[n]
    claims = await store.claim_outbound("test-worker", 20, 60)
    assert sorted(c.id for c in claims) == sorted(r.queue_id for r in reports)
