"""The DNS resolver outbound delivery and the mail checks share (dnspython, asyncio).

Nameserver address, port and timeout are settings (`[dns]`), so tests answer
from a DNS server on loopback. Results say "no such name" / "no records" /
"temporary failure" apart, because SPF (RFC 7208 §2.6), DMARC and MX routing
(RFC 5321 §5.1) each treat those differently. Positive answers are cached
in-process for their TTL (dnspython's Cache).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename


# Load now what dnspython would import at the first query (the asyncio backend, the
# record classes): the daemon may have dropped privileges by then (App.preload).
dns.asyncbackend.get_backend("asyncio")
for _rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.MX, dns.rdatatype.TXT, dns.rdatatype.PTR):
    dns.rdata.get_rdata_class(dns.rdataclass.IN, _rdtype)


class DnsTempError(Exception):
    """Timeout, SERVFAIL or no nameserver answered: try again later."""


class NoSuchDomain(Exception):
    """NXDOMAIN."""


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    host: str  # without the trailing dot; "" for the null MX (RFC 7505)


class Resolver:
    def __init__(self, nameservers: list[str] | None = None, port: int = 53, timeout: float = 5.0) -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(nameservers)
            self._resolver.port = port
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # No /etc/resolv.conf (a bare container): lookups fail as temporary errors until configured.
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
            if port != 53:
                self._resolver.port = port
        # Answers are cached for their TTL (the MX checks look up the same sender domains over and over).
        self._resolver.cache = dns.resolver.Cache()
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self.lookups = 0

    @classmethod
    def from_settings(cls, settings: Any) -> "Resolver":
        return cls(settings.nameservers, settings.port, settings.timeout)

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        """Records of one type: [] when the name exists without them; NoSuchDomain for NXDOMAIN."""
        self.lookups += 1
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise NoSuchDomain(name) from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout) as exc:
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from None
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong, dns.exception.SyntaxError):
            raise NoSuchDomain(name) from None
        return list(answer.rrset) if answer.rrset is not None else []

    async def txt(self, name: str) -> list[str]:
        """TXT strings of a name, each record's character-strings joined (RFC 7208 §3.3)."""
        records = await self._query(name, "TXT")
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records]

    async def txt_or_empty(self, name: str) -> list[str]:
        try:
            return await self.txt(name)
        except NoSuchDomain:
            return []

    async def mx(self, name: str) -> list[MxRecord]:
        """MX records by preference; equal preferences keep the server's order."""
        records = await self._query(name, "MX")
        found = [MxRecord(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in records]
        return sorted(found, key=lambda mx: mx.preference)

    async def addresses(self, name: str, *, ipv6: bool = True) -> list[str]:
        """A then AAAA addresses of a host; [] if it has none."""
        try:
            ipaddress.ip_address(name)
            return [name]
        except ValueError:
            pass
        result: list[str] = []
        try:
            result += [r.address for r in await self._query(name, "A")]
            if ipv6:
                result += [r.address for r in await self._query(name, "AAAA")]
        except NoSuchDomain:
            return result
        return result

    async def ptr(self, ip: str) -> list[str]:
        records = await self._query(dns.reversename.from_address(ip).to_text(), "PTR")
        return [r.target.to_text(omit_final_dot=True).lower() for r in records]

