"""DKIM signing and verification with dkimpy (RFC 6376; RFC 8463 ed25519-sha256).

Keys live in `<key_dir>/<domain>/<selector>.key`: an RSA key as PEM, an
Ed25519 key as the base64 of its 32-byte seed (dkimpy's format). Every key of
a domain signs, so a domain with an RSA and an Ed25519 key gets both
signatures (RFC 8463 §4 recommends dual signing while verifiers catch up).
Verification fetches the selector records on the asyncio resolver first and
hands them to dkimpy's synchronous verifier through `dnsfunc`, so nothing
blocks on DNS; large messages are hashed in a thread.
Not implemented: the `l=` body length tag when signing (never a good idea),
ARC (RFC 8617), key rotation tooling beyond `casella dkim generate`.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.util import InvalidTagValueList, parse_tag_value

from .dns import DnsTempError, NoSuchDomain, Resolver

log = logging.getLogger("casella.dkim")

_IN_THREAD_ABOVE = 256 * 1024
# RFC 6376 §5.4.1: the fields a signature should cover (those present are signed).
SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
                  b"references", b"mime-version", b"content-type", b"content-transfer-encoding",
                  b"list-id", b"list-unsubscribe", b"sender"]
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str
    private: bytes


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str  # pass fail neutral temperror permerror (none when no signature)
    domain: str
    selector: str
    algorithm: str
    b: str  # first 8 characters of b= (RFC 6008 header.b)
    reason: str = ""


def key_dir(settings) -> Path:
    """`dkim.key_dir`, or `<server.data_dir>/dkim`."""
    return Path(settings.dkim.key_dir or os.path.join(settings.server.data_dir, "dkim"))


def generate_key(directory: Path, domain: str, selector: str, algorithm: str, rsa_bits: int = 2048) -> tuple[Path, str]:
    """Create `<directory>/<domain>/<selector>.key`; returns (path, the TXT record value)."""
    target = directory / domain / f"{selector}.key"
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another selector to rotate keys")
    target.parent.mkdir(parents=True, exist_ok=True)
    if algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        private_text = base64.b64encode(seed) + b"\n"
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"  # RFC 8463 §4.2
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        private_text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"  # RFC 6376 §3.6.1
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_text)
    return target, record


def public_record(path: Path) -> str:
    """The TXT value for an existing key file."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(data, password=None)
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip()))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"


def txt_lines(name: str, value: str) -> str:
    """A zone-file line, the value split in 255-octet strings (RFC 1035 §3.3.14)."""
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)]
    return f'{name}. IN TXT ( ' + " ".join(f'"{c}"' for c in chunks) + " )"


_RSA_KEYS: dict[int, object] = {}


def _openssl_rsa_sign(digest: object, private_key: dict) -> bytes:
    """dkimpy's RSASSA-PKCS1-v1_5 signing done by OpenSSL (cryptography) instead of pure-Python pow().

    dkimpy computes RSA with Python integers: about 20 ms per 2048-bit signature, which
    capped outbound delivery near 40 messages/s. The signature bytes are identical
    (PKCS#1 v1.5 is deterministic); canonicalization and the header stay dkimpy's.
    """
    key = _RSA_KEYS.get(private_key["modulus"])
    if key is None:
        public = rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"])
        key = rsa.RSAPrivateNumbers(
            p=private_key["prime1"], q=private_key["prime2"], d=private_key["privateExponent"],
            dmp1=private_key["exponent1"], dmq1=private_key["exponent2"], iqmp=private_key["coefficient"],
            public_numbers=public).private_key()
        _RSA_KEYS[private_key["modulus"]] = key
    algorithm = hashes.SHA256() if digest.name == "sha256" else hashes.SHA1()
    return key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


# dkim.sign() looks these up in its module namespace at call time. The key cache saves
# re-parsing the PEM (pure-Python ASN.1, ~0.5 ms) on every signature.
dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign
dkim.parse_pem_private_key = functools.lru_cache(maxsize=256)(dkim.parse_pem_private_key)


class DkimSigner:
    """Signs outgoing messages with every key found for the sending domain (keys loaded lazily)."""

    def __init__(self, directory: Path, enabled: bool = True) -> None:
        self.directory = directory
        self.enabled = enabled
        self._keys: dict[str, tuple[DkimKey, ...]] = {}

    def keys_for(self, domain: str) -> tuple[DkimKey, ...]:
        domain = domain.lower().rstrip(".")
        if domain not in self._keys:
            found = []
            folder = self.directory / domain
            if folder.is_dir() and not domain.startswith("."):
                for path in sorted(folder.glob("*.key")):
                    data = path.read_bytes()
                    algorithm = "rsa-sha256" if data.lstrip().startswith(b"-----BEGIN") else "ed25519-sha256"
                    found.append(DkimKey(domain, path.stem, algorithm, data.strip() if algorithm != "rsa-sha256"
                                         else data))
            self._keys[domain] = tuple(found)
        return self._keys[domain]

    def reload(self) -> None:
        self._keys.clear()

    def sign_sync(self, raw: bytes, domain: str) -> bytes:
        """The DKIM-Signature header lines for `raw` (b"" if the domain has no key)."""
        headers = b""
        for key in self.keys_for(domain):
            try:
                headers = dkim.sign(raw, key.selector.encode(), key.domain.encode(), key.private,
                                    canonicalize=(b"relaxed", b"relaxed"),
                                    signature_algorithm=key.algorithm.encode(),
                                    include_headers=SIGNED_HEADERS) + headers
            except dkim.DKIMException as exc:
                log.error("dkim signing for %s selector %s failed: %s", key.domain, key.selector, exc)
        return headers

    async def sign(self, raw: bytes, domain: str) -> bytes:
        """`raw` with signatures prepended (unchanged when unsigned)."""
        if not self.enabled or not self.keys_for(domain):
            return raw
        if len(raw) > _IN_THREAD_ABOVE:
            headers = await asyncio.to_thread(self.sign_sync, raw, domain)
        else:
            headers = self.sign_sync(raw, domain)
        return headers + raw


def _signature_tags(raw: bytes) -> list[dict[bytes, bytes]]:
    """Tags of each DKIM-Signature field in the header block, top first."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[:end + 2]
    fields = re.findall(rb"(?im)^dkim-signature:[ \t]*((?:.*\r?\n(?:[ \t].*\r?\n)*))", head)
    found = []
    for value in fields:
        try:
            found.append(parse_tag_value(re.sub(rb"\s+", b"", value)))
        except InvalidTagValueList:
            found.append({})
    return found


async def verify_dkim(resolver: Resolver, raw: bytes) -> list[DkimResult]:
    """Every DKIM signature's result (RFC 6376 §6); [] when the message has none."""
    tags = _signature_tags(raw)
    if not tags:
        return []
    records: dict[bytes, bytes | None] = {}
    temp: set[bytes] = set()
    for tag in tags:
        if b"s" in tag and b"d" in tag:
            name = tag[b"s"] + b"._domainkey." + tag[b"d"] + b"."
            if name in records or name in temp:
                continue
            try:
                texts = await resolver.txt(name.decode("ascii", "replace"))
                records[name] = texts[0].encode() if texts else None
            except NoSuchDomain:
                records[name] = None
            except DnsTempError:
                temp.add(name)

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name if name.endswith(b".") else name + b".")

    def run() -> list[DkimResult]:
        results = []
        for index, tag in enumerate(tags):
            domain = tag.get(b"d", b"").decode("ascii", "replace").lower()
            selector = tag.get(b"s", b"").decode("ascii", "replace")
            algorithm = tag.get(b"a", b"").decode("ascii", "replace").lower()
            b = re.sub(r"\s", "", tag.get(b"b", b"").decode("ascii", "replace"))[:8]
            if not domain or not selector or algorithm not in ALGORITHMS:
                results.append(DkimResult("permerror", domain, selector, algorithm, b, "malformed signature"))
                continue
            if (tag[b"s"] + b"._domainkey." + tag[b"d"] + b".") in temp:
                results.append(DkimResult("temperror", domain, selector, algorithm, b, "key lookup failed"))
                continue
            if lookup(tag[b"s"] + b"._domainkey." + tag[b"d"]) is None:
                results.append(DkimResult("permerror", domain, selector, algorithm, b, "no key"))
                continue
            checker = dkim.DKIM(raw, minkey=1024)
            try:
                ok = checker.verify(idx=index, dnsfunc=lookup)
            except dkim.DKIMException as exc:
                results.append(DkimResult("fail", domain, selector, algorithm, b, str(exc)[:100]))
                continue
            results.append(DkimResult("pass" if ok else "fail", domain, selector, algorithm, b,
                                      "" if ok else "signature did not verify"))
        return results

    if len(raw) > _IN_THREAD_ABOVE:
        return await asyncio.to_thread(run)
    return run()
