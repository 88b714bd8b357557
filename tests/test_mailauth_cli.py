"""`casella dkim generate` and `casella dns`: the records a domain needs, as a user would paste them."""
from __future__ import annotations

import re
import subprocess

from pytest_casella import casella_command


def run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*casella_command(), *args, "--dev"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


def test_dkim_generate_then_dns_prints_every_record(tmp_path):
    made = run(tmp_path, "dkim", "generate", "example.org", "--algorithm", "ed25519-sha256", "--selector", "ed")
    assert made.returncode == 0, made.stderr
    record = re.search(r'^ed\._domainkey\.example\.org\. IN TXT \( "(v=DKIM1; k=ed25519; p=[A-Za-z0-9+/=]+)" \)$',
                       made.stdout, re.M)
    assert record, made.stdout
    assert (tmp_path / "var" / "dkim" / "example.org" / "ed.key").stat().st_mode & 0o077 == 0  # private key
    rsa = run(tmp_path, "dkim", "generate", "example.org")  # defaults: selector casella, rsa-sha256
    assert rsa.returncode == 0 and 'casella._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p=' in rsa.stdout
    again = run(tmp_path, "dkim", "generate", "example.org")
    assert again.returncode != 0 and "exists" in again.stderr  # never overwrite a published key

    out = run(tmp_path, "dns", "example.org").stdout
    assert "example.org. IN MX 10 localhost." in out
    assert 'example.org. IN TXT "v=spf1 mx -all"' in out
    assert record.group(1) in out and "casella._domainkey.example.org. IN TXT" in out
    assert '_dmarc.example.org. IN TXT "v=DMARC1; p=quarantine' in out
    assert "_submission._tcp.example.org. IN SRV 0 1 2587 localhost." in out  # RFC 6186, dev ports
    assert "_imaps._tcp.example.org. IN SRV 0 1 1993 localhost." in out
    assert "autoconfig.example.org. IN CNAME localhost." in out


def test_dns_without_key_says_how_to_make_one(tmp_path):
    out = run(tmp_path, "dns", "example.net").stdout
    assert "no DKIM key for example.net: run 'casella dkim generate example.net'" in out
