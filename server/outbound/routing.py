"""Where a recipient domain's mail goes: smart host, transport map, or MX (RFC 5321 §5.1).

MX records are tried in preference order, each MX host's addresses in turn;
a domain without MX records is its own implicit MX (A/AAAA, §5.1); a null MX
(RFC 7505, "." at preference 0) or a domain that does not exist fails at once.
Transport map values are "host:port" (host's MX looked up, then its address)
or "[host]:port" (no MX lookup), as Postfix spells them.
Not implemented: MTA-STS (RFC 8461) and DANE (RFC 7672).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.mailauth.dns import DnsTempError, NoSuchDomain, Resolver


@dataclass(frozen=True, slots=True)
class Hop:
    """One host to try, already resolved to an address."""

    host: str  # the name (for logs, DSN Remote-MTA and TLS SNI)
    address: str
    port: int
    tls: str  # "opportunistic" | "starttls" | "implicit" | "none"
    username: str = ""
    password: str = ""
    verify: bool = False


class RouteError(Exception):
    def __init__(self, permanent: bool, status: str, text: str) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.status = status  # RFC 3463 enhanced status code
        self.text = text


def _split_host_port(value: str, default_port: int) -> tuple[str, int, bool]:
    """("[h]:p" | "h:p" | "h") -> (host, port, explicit: no MX lookup)."""
    value = value.strip()
    explicit = value.startswith("[")
    if explicit:
        host, _, rest = value[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host, port, True
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port), False
    return value, default_port, False


class Router:
    def __init__(self, settings: Any, resolver: Resolver) -> None:
        self.settings = settings  # the [outbound] section
        self.resolver = resolver
        self.transport = {k.lower().rstrip("."): v for k, v in settings.transport_map.items()}

    def group_key(self, domain: str) -> str:
        """Recipients with the same key go in one SMTP transaction."""
        if self.settings.smart_host.host:
            return "smarthost"
        return domain.lower()

    async def hops(self, domain: str) -> list[Hop]:
        """Every address to try for `domain`, in order; RouteError when there is none."""
        smart = self.settings.smart_host
        if smart.host:
            tls = smart.tls.value if hasattr(smart.tls, "value") else str(smart.tls)
            addresses = await self._addresses(smart.host)
            return [Hop(smart.host, a, smart.port, tls, smart.username, smart.password, smart.verify_certificate)
                    for a in addresses]
        tls = "opportunistic" if self.settings.starttls else "none"
        entry = self.transport.get(domain.lower())
        if entry:
            host, port, explicit = _split_host_port(entry, self.settings.smtp_port)
            if explicit:
                return [Hop(host, a, port, tls) for a in await self._addresses(host)]
            return await self._mx_hops(host, port, tls)
        return await self._mx_hops(domain, self.settings.smtp_port, tls)

    async def _addresses(self, host: str) -> list[str]:
        try:
            found = await self.resolver.addresses(host)
        except DnsTempError as exc:
            raise RouteError(False, "4.4.3", f"DNS lookup of {host} failed: {exc}") from None
        if not found:
            raise RouteError(False, "4.4.4", f"{host} has no address")
        return found

    async def _mx_hops(self, domain: str, port: int, tls: str) -> list[Hop]:
        try:
            mxs = await self.resolver.mx(domain)
        except NoSuchDomain:
            raise RouteError(True, "5.1.2", f"domain {domain} does not exist") from None  # RFC 3463 5.1.2
        except DnsTempError as exc:
            raise RouteError(False, "4.4.3", f"MX lookup for {domain} failed: {exc}") from None
        if len(mxs) == 1 and mxs[0].host in ("", "."):
            raise RouteError(True, "5.1.10", f"{domain} accepts no mail (null MX)")  # RFC 7505 §3
        if not mxs:
            names = [domain]  # RFC 5321 §5.1: no MX, the domain itself is the implicit MX
        else:
            names = [mx.host for mx in mxs if mx.host not in ("", ".")]
        hops: list[Hop] = []
        temp_error = None
        for name in names:
            try:
                for address in await self.resolver.addresses(name):
                    hops.append(Hop(name, address, port, tls))
            except DnsTempError as exc:
                temp_error = exc
        if not hops:
            if temp_error is not None:
                raise RouteError(False, "4.4.3", f"address lookup for {domain} failed: {temp_error}")
            if not mxs:
                raise RouteError(True, "5.1.2", f"domain {domain} has no MX and no address")
            raise RouteError(False, "4.4.4", f"no MX host of {domain} has an address")
        return hops
