"""SPF, DKIM, DMARC and Authentication-Results against a loopback DNS server (no store involved)."""
from __future__ import annotations

import pytest

from config import load_settings
from server.mailauth import check_incoming
from server.mailauth.dkim import DkimSigner, generate_key, public_record, verify_dkim
from server.mailauth.dmarc import check_dmarc, organizational_domain
from server.mailauth.dns import Resolver
from server.mailauth.results import build, strip_forged
from server.mailauth.spf import check_spf

if __package__:
    from .test_outbound_support import DnsServer, message
else:
    from test_outbound_support import DnsServer, message


@pytest.fixture(scope="module")
def dns():
    server = DnsServer()
    yield server
    server.stop()


@pytest.fixture
def resolver(dns):
    return Resolver(["127.0.0.1"], dns.port, 2.0)


@pytest.fixture(scope="module")
def keys(tmp_path_factory, dns):
    """alpha.test has an RSA and an Ed25519 key published; the signer uses both."""
    directory = tmp_path_factory.mktemp("dkim")
    _, rsa = generate_key(directory, "alpha.test", "rsa1", "rsa-sha256", 1024)
    _, ed = generate_key(directory, "alpha.test", "ed1", "ed25519-sha256")
    dns.set("rsa1._domainkey.alpha.test", "TXT", rsa)
    dns.set("ed1._domainkey.alpha.test", "TXT", ed)
    return directory


# ---------------------------------------------------------------- SPF (RFC 7208)

SPF_CASES = [
    ("v=spf1 ip4:127.0.0.0/8 -all", "127.0.0.1", "pass"),
    ("v=spf1 ip4:10.0.0.0/8 -all", "127.0.0.1", "fail"),
    ("v=spf1 ip4:10.0.0.0/8 ~all", "127.0.0.1", "softfail"),
    ("v=spf1 ip4:10.0.0.0/8 ?all", "127.0.0.1", "neutral"),
    ("v=spf1 ip4:10.0.0.0/8", "127.0.0.1", "neutral"),  # §4.7: no match, no all
    ("v=spf1 a -all", "192.0.2.10", "pass"),
    ("v=spf1 a/24 -all", "192.0.2.99", "pass"),
    ("v=spf1 mx -all", "192.0.2.20", "pass"),
    ("v=spf1 include:inc.spf.test -all", "198.51.100.7", "pass"),
    ("v=spf1 redirect=inc.spf.test", "198.51.100.7", "pass"),
    ("v=spf1 redirect=inc.spf.test", "127.0.0.1", "fail"),
    ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::5", "pass"),
    ("v=spf1 exists:%{ir}.ex.spf.test -all", "127.0.0.9", "pass"),
    ("v=spf1 exists:%{ir}.ex.spf.test -all", "127.0.0.8", "fail"),
    ("v=spf1 include:none.spf.test -all", "127.0.0.1", "permerror"),  # §5.2: include of no record
    ("v=spf1 bogus:thing -all", "127.0.0.1", "permerror"),
    ("v=spf1 include:l1.spf.test -all", "127.0.0.1", "permerror"),  # more than 10 lookups
    ("v=spf1 include:tmp.spf.test -all", "127.0.0.1", "temperror"),
]


@pytest.mark.parametrize("record,ip,expected", SPF_CASES)
async def test_spf_results(dns, resolver, record, ip, expected):
    domain = f"d{abs(hash(record)) % 10**8}.spf.test"
    dns.set(domain, "TXT", record)
    dns.set(domain, "A", "192.0.2.10")
    dns.set(domain, "MX", (10, f"mx.{domain}"))
    dns.set(f"mx.{domain}", "A", "192.0.2.20")
    dns.set("inc.spf.test", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    dns.set("9.0.0.127.ex.spf.test", "A", "127.0.0.2")
    dns.set("none.spf.test", "A", "127.0.0.2")
    for level in range(1, 13):
        dns.set(f"l{level}.spf.test", "TXT", f"v=spf1 include:l{level + 1}.spf.test -all")
    dns.servfail.add("tmp.spf.test")
    result = await check_spf(resolver, ip, f"someone@{domain}", "helo.test")
    assert result.result == expected, result


async def test_spf_none_and_two_records_and_null_sender(dns, resolver):
    assert (await check_spf(resolver, "127.0.0.1", "a@nospf.test", "h")).result == "none"
    dns.set("two.spf.test", "TXT", "v=spf1 -all", "v=spf1 +all")
    assert (await check_spf(resolver, "127.0.0.1", "a@two.spf.test", "h")).result == "permerror"
    dns.set("helo.spf.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    result = await check_spf(resolver, "127.0.0.1", "<>", "helo.spf.test")  # RFC 7208 §2.4: HELO identity
    assert (result.result, result.identity, result.domain) == ("pass", "helo", "helo.spf.test")


# ---------------------------------------------------------------- DKIM (RFC 6376, 8463)

async def test_dkim_sign_both_algorithms_and_verify(keys, resolver):
    signer = DkimSigner(keys)
    raw = message("a@alpha.test", "b@beta.test")
    signed = await signer.sign(raw, "alpha.test")
    assert signed.count(b"DKIM-Signature:") == 2
    results = await verify_dkim(resolver, signed)
    assert sorted((r.result, r.algorithm, r.selector) for r in results) == [
        ("pass", "ed25519-sha256", "ed1"), ("pass", "rsa-sha256", "rsa1")]
    assert public_record(keys / "alpha.test" / "ed1.key").startswith("v=DKIM1; k=ed25519; p=")


async def test_dkim_tampered_body_fails_and_missing_key_is_permerror(keys, resolver):
    signer = DkimSigner(keys)
    signed = await signer.sign(message("a@alpha.test", "b@beta.test"), "alpha.test")
    tampered = signed.replace(b"Hello there.", b"Hello thEre.")
    assert {r.result for r in await verify_dkim(resolver, tampered)} == {"fail"}
    forged = signed.replace(b"s=rsa1", b"s=nokey").replace(b"s=ed1", b"s=nokey")
    assert {r.result for r in await verify_dkim(resolver, forged)} == {"permerror"}
    assert await verify_dkim(resolver, message("a@alpha.test", "b@beta.test")) == []


async def test_unsigned_domain_is_left_alone(keys):
    raw = message("a@other.test", "b@beta.test")
    assert await DkimSigner(keys).sign(raw, "other.test") == raw
    assert await DkimSigner(keys, enabled=False).sign(raw, "alpha.test") == raw


# ---------------------------------------------------------------- DMARC (RFC 7489)

def test_organizational_domain():
    assert organizational_domain("mail.sub.example.com") == "example.com"
    assert organizational_domain("a.example.co.uk") == "example.co.uk"


async def test_dmarc_alignment_and_policies(dns, resolver):
    dns.set("_dmarc.dm.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    raw = message("x@dm.test", "b@beta.test")
    assert (await check_dmarc(resolver, raw, "pass", "dm.test", [])).result == "pass"
    assert (await check_dmarc(resolver, raw, "pass", "bounce.dm.test", [])).result == "pass"  # relaxed
    assert (await check_dmarc(resolver, raw, "fail", "dm.test", ["sub.dm.test"])).result == "pass"
    result = await check_dmarc(resolver, raw, "pass", "other.test", ["other.test"])
    assert (result.result, result.policy) == ("fail", "reject")
    sub = await check_dmarc(resolver, message("x@news.dm.test", "b@beta.test"), "fail", "x.test", [])
    assert (sub.result, sub.policy) == ("fail", "quarantine")  # sp= for subdomains
    dns.set("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject; aspf=s; adkim=s")
    strict = message("x@strict.test", "b@beta.test")
    assert (await check_dmarc(resolver, strict, "pass", "bounce.strict.test", ["m.strict.test"])).result == "fail"
    assert (await check_dmarc(resolver, message("x@nodmarc.test", "b"), "fail", "", [])).result == "none"
    dns.servfail.add("_dmarc.tempdm.test")
    assert (await check_dmarc(resolver, message("x@tempdm.test", "b"), "fail", "", [])).result == "temperror"


# ---------------------------------------------------------------- Authentication-Results (RFC 8601)

def test_results_header_and_forged_removal():
    line = build("mx.beta.test", [("spf", "pass", "", [("smtp.mailfrom", "a@alpha.test")]),
                                  ("dkim", "fail", "bad (sig)", [("header.d", "alpha.test")])])
    assert line == (b"Authentication-Results: mx.beta.test;\r\n\tspf=pass smtp.mailfrom=a@alpha.test;\r\n"
                    b"\tdkim=fail (bad [sig]) header.d=alpha.test\r\n")
    assert build("h", []) == b"Authentication-Results: h;\r\n\tnone\r\n"
    raw = (b"Authentication-Results: MX.beta.test; dkim=pass\r\nAuthentication-Results:\r\n mx.beta.test;\r\n"
           b" spf=pass\r\nAuthentication-Results: other.test; spf=fail\r\nSubject: x\r\n\r\n"
           b"Authentication-Results: mx.beta.test; in the body stays\r\n")
    stripped, removed = strip_forged(raw, "mx.beta.test")
    assert removed == 2
    assert stripped == (b"Authentication-Results: other.test; spf=fail\r\nSubject: x\r\n\r\n"
                        b"Authentication-Results: mx.beta.test; in the body stays\r\n")


async def test_check_incoming_verdicts(dns, resolver, keys):
    settings = load_settings(overrides={"server": {"hostname": "mx.beta.test"}})
    dns.set("alpha.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.set("_dmarc.alpha.test", "TXT", "v=DMARC1; p=reject")
    signed = await DkimSigner(keys).sign(message("a@alpha.test", "b@beta.test"), "alpha.test")
    forged = b"Authentication-Results: mx.beta.test; dkim=pass\r\n" + signed
    verdict = await check_incoming(forged, "127.0.0.1", "mail.alpha.test", "a@alpha.test", settings, resolver)
    assert verdict.action == "accept"
    text = verdict.header_line.decode()
    assert "spf=pass" in text and "dkim=pass" in text and "dmarc=pass" in text
    assert verdict.message.count(b"Authentication-Results:") == 1
    assert verdict.message.startswith(verdict.header_line)
    # From alpha.test, sent from elsewhere and unsigned: DMARC p=reject fails.
    bad = await check_incoming(message("a@alpha.test", "b@beta.test"), "203.0.113.5", "evil", "a@alpha.test",
                               settings, resolver)
    assert (bad.action, bad.dmarc.result) == ("reject", "fail")
    assert bad.reply.startswith("550 5.7.1")
    quarantine = settings.model_copy(update={"mailauth": settings.mailauth.model_copy(
        update={"dmarc_reject_action": "quarantine"})})
    again = await check_incoming(message("a@alpha.test", "b@beta.test"), "203.0.113.5", "evil", "a@alpha.test",
                                 quarantine, resolver)
    assert again.action == "quarantine"


async def test_silent_resolver_gives_temperror_within_bound():
    import socket
    import time

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        settings = load_settings(overrides={"server": {"hostname": "mx.beta.test"}, "dns": {"timeout": 0.3}})
        resolver = Resolver(["127.0.0.1"], silent.getsockname()[1], 0.3)
        started = time.monotonic()
        verdict = await check_incoming(message("a@alpha.test", "b@beta.test"), "127.0.0.1", "h", "a@alpha.test",
                                       settings, resolver)
        assert time.monotonic() - started < 5
        assert verdict.action == "accept" and b"temperror" in verdict.header_line
    finally:
        silent.close()
