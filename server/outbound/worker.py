"""The delivery worker: consumes the durable outbound queue (RFC 5321 §4.5.4 retry strategy).

One worker per daemon. It claims due items with a lease through the store
(on PostgreSQL `FOR UPDATE SKIP LOCKED`, so two casella processes never
deliver the same item), delivers at most `outbound.concurrency` items at a
time, one SMTP transaction per recipient domain (or one for everything via a
smart host), then records each recipient's outcome: 2xx done; 4xx or no
connection retried with exponential backoff until `outbound.lifetime_seconds`;
5xx bounced at once. Bounces and "delayed" notices are RFC 3464 DSNs sent
with a null sender, never for a message that itself had a null sender.
Nothing lives only in memory: a restart finds everything in the queue (a
clean shutdown gives its leases back, a crash's leases expire).
Delivery is at-least-once: a crash between the remote 250 and recording it
sends the message again (RFC 5321 §6.1 prefers a duplicate to a loss); a DSN
is delivered before its failure is recorded, for the same reason.
Leases are renewed every third of `lease_seconds` while an item is being
delivered, so a slow remote host never lets another worker claim it.
Not implemented: rate limits per destination, a per-destination concurrency cap.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

from server.mailauth.dkim import DkimSigner
from server.mailauth.dmarc import from_domains
from server.mailauth.dns import Resolver

from . import client
from .client import ConnectionCache, Outcome
from .dsn import RecipientReport, build_dsn
from .routing import RouteError, Router

log = logging.getLogger("casella.outbound")

# Messages smaller than this come with the claim (one read fewer); larger ones are read when needed.
CLAIM_CONTENT_BELOW = 256 * 1024


def _null(sender: str) -> bool:
    return sender.strip() in ("", "<>")


class OutboundWorker:
    def __init__(self, store: Any, settings: Any, resolver: Resolver, signer: DkimSigner | None = None, *,
                 worker_id: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.config = settings.outbound
        self.hostname = settings.server.hostname
        self.helo = self.config.helo_name or self.hostname
        self.resolver = resolver
        self.router = Router(self.config, resolver)
        self.signer = signer
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.connections = ConnectionCache(self.config.connection_cache_seconds)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._stopping = False
        self.delivered = 0
        self.bounced = 0
        self.deferred = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="casella-outbound")

    def wake(self) -> None:
        """Look at the queue now (new mail queued, `queue retry`)."""
        self._wakeup.set()

    async def close(self, timeout: float) -> None:
        """Stop claiming, let in-flight deliveries finish (bounded), give back our leases."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=timeout)
        if self._in_flight:
            done, pending = await asyncio.wait(self._in_flight, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.connections.close()
        try:
            released = await self.store.release_outbound(self.worker_id)
            if released:
                log.info("outbound: gave back %d leased item(s)", released)
        except Exception:  # noqa: BLE001 - leases expire anyway
            log.exception("outbound: could not release leases")

    async def _run(self) -> None:
        log.info("outbound worker %s started (concurrency %d)", self.worker_id, self.config.concurrency)
        while not self._stopping:
            try:
                claimed = await self.run_once(wait=False)
            except Exception:  # noqa: BLE001 - the database may be briefly away; try again
                log.exception("outbound: claiming from the queue failed")
                claimed = 0
            if self._stopping:
                break
            free = self.config.concurrency - len(self._in_flight)
            # Claim again once a quarter of the slots are free: fewer, larger claim transactions.
            if claimed and free >= max(1, self.config.concurrency // 4):
                continue
            await self._sleep(bool(claimed) or free <= 0)

    async def _sleep(self, full: bool) -> None:
        timeout = self.config.poll_interval
        if full and self._in_flight:
            await asyncio.wait(self._in_flight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            return
        try:
            due = await self.store.next_outbound_due()
        except Exception:  # noqa: BLE001
            due = None
        if due is not None:
            timeout = max(0.0, min(timeout, (due - datetime.now(timezone.utc)).total_seconds()))
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def run_once(self, *, wait: bool = True) -> int:
        """Claim what is due (up to the free slots) and start delivering; with `wait`, until done."""
        free = self.config.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        claims = await self.store.claim_outbound(self.worker_id, free, self.config.lease_seconds,
                                                 content_below=CLAIM_CONTENT_BELOW)
        tasks = []
        for claim in claims:
            task = asyncio.get_running_loop().create_task(self._process_safely(claim))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            tasks.append(task)
        if wait and tasks:
            await asyncio.gather(*tasks)
        return len(claims)

    async def _process_safely(self, claim: Any) -> None:
        try:
            await self.process(claim)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one broken item must not stop the worker
            log.exception("outbound: item %d failed unexpectedly; retrying later", claim.id)
            retry = datetime.now(timezone.utc) + timedelta(seconds=self.config.retry_initial_seconds)
            try:
                await self.store.record_outbound_attempt(claim.id, self.worker_id, [], retry_at=retry,
                                                         error="internal error")
            except Exception:  # noqa: BLE001
                log.exception("outbound: could not reschedule item %d", claim.id)

    # ------------------------------------------------------------ one item

    def backoff(self, attempts: int) -> float:
        """Seconds until the next attempt after `attempts` failed ones (RFC 5321 §4.5.4.1)."""
        delay = self.config.retry_initial_seconds * (self.config.retry_factor ** attempts)
        return min(delay, self.config.retry_max_seconds)

    def _signing_domain(self, raw: bytes, mail_from: str) -> str:
        domains = from_domains(raw)
        if domains and self.signer is not None and self.signer.keys_for(domains[0]):
            return domains[0]
        return (mail_from.strip("<>").rpartition("@")[2] or self.hostname).lower()

    async def process(self, claim: Any) -> None:
        # A slow remote (RFC 5321 §4.5.3.2 allows minutes per command) must not outlive our lease.
        renewal = asyncio.get_running_loop().create_task(self._renew(claim.id))
        try:
            await self._process(claim)
        finally:
            renewal.cancel()

    async def _renew(self, queue_id: int) -> None:
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            try:
                if not await self.store.renew_outbound_lease(queue_id, self.worker_id, self.config.lease_seconds):
                    log.warning("outbound: lost the lease on item %d", queue_id)
                    return
            except Exception:  # noqa: BLE001 - the next renewal may work
                log.exception("outbound: could not renew the lease on item %d", queue_id)

    async def _process(self, claim: Any) -> None:
        started = time.monotonic()
        now = datetime.now(timezone.utc)
        pending = claim.pending
        if not pending:
            await self.store.record_outbound_attempt(claim.id, self.worker_id, [], retry_at=None, error=None)
            return
        raw = claim.content if claim.content is not None else await self.store.outbound_content(claim.id)
        message = raw
        if self.signer is not None and self.signer.enabled:
            message = await self.signer.sign(raw, self._signing_domain(raw, claim.mail_from))
        mail_from = "" if _null(claim.mail_from) else claim.mail_from.strip("<>")
        groups: dict[str, list[Any]] = defaultdict(list)
        for rcpt in pending:
            groups[self.router.group_key(rcpt.domain)].append(rcpt)
        outcomes: dict[str, Outcome] = {}

        async def one_group(rcpts: list[Any]) -> None:
            domain = rcpts[0].domain
            addresses = [r.address for r in rcpts]
            try:
                hops = await self.router.hops(domain)
            except RouteError as exc:
                for address in addresses:
                    outcomes[address] = Outcome("perm" if exc.permanent else "temp", exc.text, exc.status)
                return
            transaction = await client.deliver(hops, mail_from, addresses, message, helo=self.helo,
                                               connect_timeout=self.config.connect_timeout,
                                               command_timeout=self.config.command_timeout,
                                               cache=self.connections)
            outcomes.update(transaction.outcomes)

        await asyncio.gather(*(one_group(rcpts) for rcpts in groups.values()))
        expired = (now - claim.created_at).total_seconds() >= self.config.lifetime_seconds
        results: list[tuple[int, str, str]] = []
        failed: list[RecipientReport] = []
        delayed: list[RecipientReport] = []
        errors = []
        for rcpt in pending:
            outcome = outcomes.get(rcpt.address) or Outcome("temp", "no outcome", "4.0.0")
            if outcome.kind == "sent":
                results.append((rcpt.id, "sent", outcome.reply))
                self.delivered += 1
            elif outcome.kind == "perm":
                results.append((rcpt.id, "failed", outcome.reply))
                failed.append(RecipientReport(rcpt.address, "failed", outcome.status, outcome.reply, outcome.remote))
            elif expired:
                # RFC 3463 4.4.7: delivery time expired; the last error says why.
                text = f"message expired after {self.config.lifetime_seconds:.0f}s; last error: {outcome.reply}"
                results.append((rcpt.id, "failed", text))
                failed.append(RecipientReport(rcpt.address, "failed", "4.4.7", text, outcome.remote))
            else:
                results.append((rcpt.id, "pending", outcome.reply))
                delayed.append(RecipientReport(rcpt.address, "delayed", outcome.status, outcome.reply,
                                               outcome.remote))
                errors.append(f"{rcpt.address}: {outcome.reply}")
        lifetime_end = claim.created_at + timedelta(seconds=self.config.lifetime_seconds)
        if failed:
            self.bounced += len(failed)
            if _null(claim.mail_from):
                log.warning("outbound: item %d (null sender) failed for %s; no bounce of a bounce", claim.id,
                            ", ".join(r.address for r in failed))  # RFC 5321 §4.5.5
            else:
                await self._send_dsn(claim, raw, failed, None)
        if delayed:
            self.deferred += len(delayed)
            age = (now - claim.created_at).total_seconds()
            if (not claim.delayed_notice_sent and age >= self.config.delayed_notice_seconds
                    and not _null(claim.mail_from)):
                await self._send_dsn(claim, raw, delayed, lifetime_end)
                await self.store.mark_outbound_delayed(claim.id)
        retry_at = now + timedelta(seconds=self.backoff(claim.attempts))
        retry_at = min(retry_at, lifetime_end)  # one last try right at the end of the lifetime
        if not delayed:
            # Everyone is done (the usual case): drop the item in two statements.
            left = 0 if await self.store.finish_outbound(claim.id, self.worker_id) else -1
        else:
            left = await self.store.record_outbound_attempt(claim.id, self.worker_id, results, retry_at=retry_at,
                                                            error="; ".join(errors)[:2000] or None)
        if left < 0:
            log.warning("outbound: lease on item %d was lost before recording; another worker owns it", claim.id)
        log.info("outbound: item %d from=<%s> sent=%d failed=%d deferred=%d ms=%.1f%s", claim.id, mail_from,
                 sum(1 for r in results if r[1] == "sent"), len(failed), len(delayed),
                 (time.monotonic() - started) * 1000, f" next={retry_at:%H:%M:%S}" if left > 0 else "")

    async def _send_dsn(self, claim: Any, raw: bytes, reports: list[RecipientReport],
                        retry_until: datetime | None) -> None:
        sender = claim.mail_from.strip("<>")
        dsn = build_dsn(hostname=self.hostname, sender=sender, original=raw, reports=reports,
                        arrival=claim.created_at, retry_until=retry_until)
        resolution = await self.store.resolve_recipient(sender)
        if resolution is not None and resolution.local and resolution.account_ids:
            await self.store.deliver(dsn, list(resolution.account_ids))
        else:
            # RFC 5321 §4.5.5: notifications go out with a null reverse-path.
            await self.store.deliver(dsn, [], outbound_from="", outbound_to=[sender])
            self.wake()
        log.info("outbound: %s DSN for item %d sent to <%s> (%s)", reports[0].action, claim.id, sender,
                 ", ".join(f"{r.address} {r.status}" for r in reports))
