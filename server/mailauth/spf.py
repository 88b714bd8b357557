"""SPF (RFC 7208) check_host() on the asyncio resolver.

Written here rather than taken from pyspf: pyspf resolves synchronously (it
would block the daemon's loop or need a thread per check) and takes its
resolver from module globals, while this runs on our configured resolver
(a loopback DNS server in tests) with no threads. Implemented: all, include,
a, mx, ip4, ip6, exists, redirect=, qualifiers, CIDR lengths, the macro
language of §7 (letters s l o d i h v, digit and `r` transformers,
delimiters), the 10-lookup limit (§4.6.4) and the 2 void-lookup limit.
Not implemented: `ptr` (deprecated by §5.5: it never matches here, but counts
as a lookup), `exp=` explanations, the `p`/`c`/`r`/`t` macros (expand to
"unknown" or empty).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .dns import DnsTempError, NoSuchDomain, Resolver

MAX_LOOKUPS = 10  # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 §4.6.4
MAX_MX_ADDRESS_LOOKUPS = 10  # RFC 7208 §4.6.4: per mx mechanism

QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECH = re.compile(r"^([+\-~?]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?=$|[:/])(.*)$", re.I)
_MODIFIER = re.compile(r"^([a-z][a-z0-9_.\-]*)=(.*)$", re.I)
_MACRO = re.compile(r"%\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}", re.I)


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # pass fail softfail neutral none temperror permerror
    domain: str  # the domain checked (MAIL FROM's, or HELO's for a null sender)
    identity: str  # "mailfrom" or "helo"
    reason: str = ""


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


class _Check:
    def __init__(self, resolver: Resolver, ip: str, sender: str, helo: str) -> None:
        self.resolver = resolver
        self.ip = ipaddress.ip_address(ip)
        if isinstance(self.ip, ipaddress.IPv6Address) and self.ip.ipv4_mapped:
            self.ip = self.ip.ipv4_mapped
        self.sender = sender
        self.helo = helo
        self.lookups = 0
        self.voids = 0

    def _count(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError("more than 10 DNS lookups")  # RFC 7208 §4.6.4

    async def _records(self, coro) -> list:
        try:
            found = await coro
        except NoSuchDomain:
            found = []
        except DnsTempError as exc:
            raise _TempError(str(exc)) from None
        if not found:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError("more than 2 void lookups")  # RFC 7208 §4.6.4
        return found

    def expand(self, text: str, domain: str) -> str:
        """RFC 7208 §7 macro expansion."""
        local, _, sender_domain = self.sender.rpartition("@")
        values = {"s": self.sender, "l": local or "postmaster", "o": sender_domain, "d": domain,
                  "h": self.helo, "v": "in-addr" if self.ip.version == 4 else "ip6", "p": "unknown",
                  "c": str(self.ip), "r": "unknown", "t": "0"}
        if self.ip.version == 4:
            values["i"] = str(self.ip)
        else:
            values["i"] = ".".join(self.ip.exploded.replace(":", ""))

        def one(match: re.Match) -> str:
            letter, digits, reverse, delimiters = match.groups()
            value = values[letter.lower()]
            parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                parts = parts[-int(digits):] if int(digits) else parts
            return ".".join(parts)

        text = text.replace("%%", "\0pct\0").replace("%_", " ").replace("%-", "%20")
        if re.search(r"%(?![{])", text.replace("%20", "")):
            raise _PermError(f"bad macro in {text!r}")
        return _MACRO.sub(one, text).replace("\0pct\0", "%")

    def _target(self, argument: str, domain: str) -> tuple[str, int, int]:
        """`:domain/cidr4//cidr6` of a or mx."""
        cidr4, cidr6 = 32, 128
        match = re.match(r"^(?::([^/]*))?(?:/(\d+))?(?://(\d+))?$", argument)
        if not match:
            raise _PermError(f"bad argument {argument!r}")
        name, c4, c6 = match.groups()
        if c4:
            cidr4 = int(c4)
        if c6:
            cidr6 = int(c6)
        if cidr4 > 32 or cidr6 > 128:
            raise _PermError("bad CIDR length")
        return (self.expand(name, domain) if name else domain), cidr4, cidr6

    def _in(self, addresses: list[str], cidr4: int, cidr6: int) -> bool:
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            if ip.version != self.ip.version:
                continue
            network = ipaddress.ip_network(f"{ip}/{cidr4 if ip.version == 4 else cidr6}", strict=False)
            if self.ip in network:
                return True
        return False

    async def check_host(self, domain: str, depth: int = 0) -> str:
        if depth > MAX_LOOKUPS:
            raise _PermError("include loop")
        try:
            texts = await self.resolver.txt(domain)
        except NoSuchDomain:
            return "none"  # RFC 7208 §4.3
        except DnsTempError as exc:
            raise _TempError(str(exc)) from None
        records = [t for t in texts if re.match(r"^v=spf1(\s|$)", t, re.I)]
        if not records:
            return "none"  # RFC 7208 §4.5
        if len(records) > 1:
            raise _PermError("more than one SPF record")  # RFC 7208 §4.5
        terms = records[0].split()[1:]
        redirect = None
        mechanisms = []
        for term in terms:
            mech = _MECH.match(term)
            if mech:
                mechanisms.append(mech.groups())
                continue
            modifier = _MODIFIER.match(term)
            if not modifier:
                raise _PermError(f"unknown term {term!r}")  # RFC 7208 §4.6.1
            if modifier.group(1).lower() == "redirect":
                if redirect is not None:
                    raise _PermError("two redirect modifiers")
                redirect = modifier.group(2)
        for qualifier, name, argument in mechanisms:
            if await self._matches(name.lower(), argument, domain, depth):
                return QUALIFIERS[qualifier or "+"]
        if redirect is not None:  # RFC 7208 §6.1: only when no mechanism matched
            self._count()
            target = self.expand(redirect, domain)
            result = await self.check_host(target, depth + 1)
            if result == "none":
                raise _PermError(f"redirect to {target} without SPF record")
            return result
        return "neutral"  # RFC 7208 §4.7

    async def _matches(self, name: str, argument: str, domain: str, depth: int) -> bool:
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            try:
                network = ipaddress.ip_network(argument.lstrip(":"), strict=False)
            except ValueError:
                raise _PermError(f"bad {name} {argument!r}") from None
            if network.version != (4 if name == "ip4" else 6):
                raise _PermError(f"bad {name} {argument!r}")
            return self.ip.version == network.version and self.ip in network
        if name == "include":
            self._count()
            target = self.expand(argument.lstrip(":"), domain)
            result = await self.check_host(target, depth + 1)
            if result == "none":
                raise _PermError(f"include of {target} without SPF record")  # RFC 7208 §5.2
            return result == "pass"
        if name == "a":
            self._count()
            target, cidr4, cidr6 = self._target(argument, domain)
            return self._in(await self._records(self.resolver.addresses(target)), cidr4, cidr6)
        if name == "mx":
            self._count()
            target, cidr4, cidr6 = self._target(argument, domain)
            mxs = await self._records(self.resolver.mx(target))
            if len(mxs) > MAX_MX_ADDRESS_LOOKUPS:
                raise _PermError("more than 10 MX names")
            for mx in mxs:
                if mx.host and self._in(await self._records(self.resolver.addresses(mx.host)), cidr4, cidr6):
                    return True
            return False
        if name == "exists":
            self._count()
            target = self.expand(argument.lstrip(":"), domain)
            try:
                return bool(await self.resolver.addresses(target, ipv6=False))
            except DnsTempError as exc:
                raise _TempError(str(exc)) from None
        if name == "ptr":
            self._count()  # RFC 7208 §5.5: SHOULD NOT be used; we never match it
            return False
        raise _PermError(f"unknown mechanism {name}")


async def check_spf(resolver: Resolver, ip: str, mail_from: str, helo: str) -> SpfResult:
    """RFC 7208 §2.4: check MAIL FROM's domain; for a null sender, check the HELO name."""
    sender = mail_from.strip().strip("<>")
    identity = "mailfrom"
    if not sender or "@" not in sender:
        sender = f"postmaster@{helo}"
        identity = "helo"
    domain = sender.rpartition("@")[2].lower().rstrip(".")
    if not domain or "." not in domain:
        return SpfResult("none", domain, identity, "no usable domain")
    check = _Check(resolver, ip, sender, helo)
    try:
        return SpfResult(await check.check_host(domain), domain, identity)
    except _PermError as exc:
        return SpfResult("permerror", domain, identity, str(exc))
    except _TempError as exc:
        return SpfResult("temperror", domain, identity, str(exc))
