"""DMARC evaluation (RFC 7489) from SPF and DKIM results.

Policy discovery (§6.6.3): `_dmarc.<From domain>`, then `_dmarc.<organizational
domain>`. Identifier alignment (§3.1): relaxed (same organizational domain)
or strict (same domain), per `adkim`/`aspf`.
Not implemented: the Public Suffix List. The organizational domain is the
last two labels, or three when the second-level label is a common public
second-level such as co.uk or com.au (a heuristic that is wrong for some
private suffixes). `pct` is honoured only at 0 (monitoring) and 100; rua/ruf
reports are not sent.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses

from .dns import DnsTempError, Resolver

_SECOND_LEVEL = {"co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go", "ltd", "plc"}


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # pass fail none temperror permerror
    from_domain: str
    policy: str  # none quarantine reject (the one that applies to this From domain)
    reason: str = ""


def organizational_domain(domain: str) -> str:
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL and len(labels[-1]) == 2:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def from_domains(raw: bytes) -> list[str]:
    """Domains of the RFC 5322 From field(s) (§6.6.1)."""
    end = raw.find(b"\r\n\r\n")
    head = (raw if end < 0 else raw[:end + 2]).decode("utf-8", "replace")
    values = re.findall(r"(?im)^from:[ \t]*((?:.*\r?\n(?:[ \t].*\r?\n)*))", head)
    domains = []
    for _, address in getaddresses([re.sub(r"\r?\n", "", v) for v in values]):
        if "@" in address:
            domains.append(address.rpartition("@")[2].lower().strip().rstrip(">"))
    return domains


def parse_record(text: str) -> dict[str, str] | None:
    tags = {}
    for part in text.split(";"):
        if "=" in part:
            key, _, value = part.partition("=")
            tags[key.strip().lower()] = value.strip()
    if tags.get("v") != "DMARC1" or not text.strip().startswith("v"):  # RFC 7489 §6.3: v first
        return None
    return tags


async def _record(resolver: Resolver, domain: str) -> dict[str, str] | None:
    texts = await resolver.txt_or_empty(f"_dmarc.{domain}")
    records = [r for r in (parse_record(t) for t in texts) if r is not None]
    return records[0] if len(records) == 1 else None  # §6.6.3: more than one = none


async def check_dmarc(resolver: Resolver, raw: bytes, spf_result: str, spf_domain: str,
                      dkim_passes: list[str]) -> DmarcResult:
    """`dkim_passes`: the d= of each passing signature."""
    domains = set(from_domains(raw))
    if len(domains) != 1:
        # §6.6.1: a message without exactly one From domain cannot be evaluated.
        return DmarcResult("permerror" if domains else "none", ",".join(sorted(domains)), "none",
                           "not exactly one From domain")
    from_domain = domains.pop()
    try:
        record = await _record(resolver, from_domain)
        is_sub = False
        if record is None:
            org = organizational_domain(from_domain)
            if org != from_domain:
                record = await _record(resolver, org)
                is_sub = True
    except DnsTempError as exc:
        return DmarcResult("temperror", from_domain, "none", str(exc))
    if record is None:
        return DmarcResult("none", from_domain, "none")
    policy = record.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        # §6.6.3: an invalid p= with a valid rua= is treated as none; without, no record.
        return DmarcResult("none", from_domain, "none", "invalid p=")
    if is_sub and record.get("sp", "").lower() in ("none", "quarantine", "reject"):
        policy = record["sp"].lower()
    if record.get("pct", "100").strip() == "0":
        policy = "none"
    adkim = record.get("adkim", "r").lower()
    aspf = record.get("aspf", "r").lower()
    if any(aligned(d, from_domain, adkim) for d in dkim_passes):
        return DmarcResult("pass", from_domain, policy, "dkim aligned")
    if spf_result == "pass" and spf_domain and aligned(spf_domain, from_domain, aspf):
        return DmarcResult("pass", from_domain, policy, "spf aligned")
    return DmarcResult("fail", from_domain, policy, "no aligned pass")
