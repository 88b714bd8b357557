"""Mail authentication: DKIM signing (outbound) and SPF, DKIM, DMARC checks (MX side).

RFCs: 6376 (DKIM), 8463 (Ed25519 DKIM), 7208 (SPF), 7489 (DMARC), 8601
(Authentication-Results). Layout: `dns.py` (the shared asyncio resolver),
`spf.py` (our own check_host on that resolver: why in its docstring),
`dkim.py` (dkimpy signing with per-domain keys, verification with prefetched
keys), `dmarc.py`, `results.py` (the header and forged-header removal).

`check_incoming()` is what the MX listener calls at end of DATA: it returns
the Authentication-Results line, the message with forged results removed and
that line on top, and what to do (accept, reject with 550 5.7.1, quarantine
to Junk). A DMARC temperror never rejects (RFC 7489 §6.6.2 leaves it to the
receiver; we accept and record it).
Not implemented: ARC, iprev, BIMI, DMARC reports (rua/ruf).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from .dkim import DkimResult, DkimSigner, verify_dkim
from .dmarc import DmarcResult, check_dmarc
from .dns import Resolver
from .results import build, strip_forged
from .spf import SpfResult, check_spf

__all__ = ["IncomingVerdict", "check_incoming", "Resolver", "DkimSigner", "REPLY_DMARC_REJECT"]

log = logging.getLogger("casella.mailauth")

#: RFC 7489 §6.7 with RFC 3463 5.7.1 (delivery not authorized); RFC 7372 would say 5.7.26 (unregistered here).
REPLY_DMARC_REJECT = "550 5.7.1 Message rejected by the DMARC policy of {domain}"


@dataclass(frozen=True, slots=True)
class IncomingVerdict:
    header_line: bytes  # the Authentication-Results field, CRLF-terminated
    action: str  # accept | reject | quarantine
    reason: str
    message: bytes  # forged results removed, header_line on top
    spf: SpfResult | None = None
    dkim: tuple[DkimResult, ...] = ()
    dmarc: DmarcResult | None = None

    @property
    def reply(self) -> str:
        """The SMTP reply for action == "reject"."""
        return REPLY_DMARC_REJECT.format(domain=self.dmarc.from_domain if self.dmarc else "the sender")


def authserv_id(settings: Any) -> str:
    return settings.mailauth.authserv_id or settings.server.hostname


async def check_incoming(raw: bytes, peer_ip: str, helo: str, mail_from: str, settings: Any,
                         resolver: Resolver) -> IncomingVerdict:
    """SPF, DKIM and DMARC for one received message (MX side).

    Bounded by three DNS timeouts in all: past that the message is accepted with
    every method recorded as temperror (a slow resolver must not hold DATA open).
    """
    try:
        return await asyncio.wait_for(_check(raw, peer_ip, helo, mail_from, settings, resolver),
                                      settings.dns.timeout * 3)
    except asyncio.TimeoutError:
        server_id = authserv_id(settings)
        log.warning("mail checks timed out for <%s> from %s; recorded as temperror", mail_from, peer_ip)
        line = build(server_id, [(method, "temperror", "timed out", []) for method in ("spf", "dkim", "dmarc")])
        stripped, _ = strip_forged(raw, server_id)
        return IncomingVerdict(line, "accept", "checks timed out", line + stripped)


async def _check(raw: bytes, peer_ip: str, helo: str, mail_from: str, settings: Any,
                 resolver: Resolver) -> IncomingVerdict:
    server_id = authserv_id(settings)
    spf = await check_spf(resolver, peer_ip, mail_from, helo or "")
    dkims = await verify_dkim(resolver, raw)
    dmarc = await check_dmarc(resolver, raw, spf.result, spf.domain if spf.identity == "mailfrom" else "",
                              [d.domain for d in dkims if d.result == "pass"])
    results: list[tuple[str, str, str, list[tuple[str, str]]]] = []
    sender = mail_from.strip().strip("<>")
    if spf.identity == "mailfrom":
        results.append(("spf", spf.result, spf.reason, [("smtp.mailfrom", sender)]))
    else:
        results.append(("spf", spf.result, spf.reason, [("smtp.helo", helo)]))
    if not dkims:
        results.append(("dkim", "none", "", []))
    for d in dkims:
        results.append(("dkim", d.result, d.reason if d.result != "pass" else "",
                        [("header.d", d.domain), ("header.s", d.selector), ("header.a", d.algorithm),
                         ("header.b", d.b)]))
    results.append(("dmarc", dmarc.result, f"p={dmarc.policy}" if dmarc.result != "none" else dmarc.reason,
                    [("header.from", dmarc.from_domain)]))
    line = build(server_id, results)
    stripped, removed = strip_forged(raw, server_id)
    if removed:
        log.info("removed %d forged Authentication-Results field(s) claiming %s", removed, server_id)
    action, reason = "accept", ""
    if dmarc.result == "fail" and dmarc.policy == "reject":
        # RFC 7489 §6.7: reject at SMTP, or quarantine when the local policy says so.
        action = settings.mailauth.dmarc_reject_action
        reason = f"DMARC p=reject for {dmarc.from_domain}"
    elif dmarc.result == "fail" and dmarc.policy == "quarantine" and settings.mailauth.dmarc_quarantine:
        action, reason = "quarantine", f"DMARC p=quarantine for {dmarc.from_domain}"
    return IncomingVerdict(line, action, reason, line + stripped, spf, tuple(dkims), dmarc)
