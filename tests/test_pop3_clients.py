"""Real POP3 clients against Casella: fetchmail (keep and no-keep, STLS and pop3s) and curl (pop3://, pop3s://)."""
from __future__ import annotations

import os
import poplib
import shutil
import ssl
import subprocess

import pytest

pytestmark = pytest.mark.skipif(not shutil.which("fetchmail") or not shutil.which("curl"),
                                reason="fetchmail and curl are installed by .ci/run (Debian packages)")


def message(n: int) -> bytes:
    return (b"From: sender@example.test\r\nTo: rcpt@example.test\r\nSubject: client test %d\r\n"
            b"Message-ID: <client%d@example.test>\r\n\r\nHello from message %d.\r\n.leading dot line\r\n"
            % (n, n, n))


def deliver(server, user, raw: bytes) -> None:
    server.admin.run(server.admin.store.deliver(raw, [user.id]))


def inbox_count(server, user) -> int:
    return server.admin.run(server.admin.store.mailbox_status(user.id, "INBOX")).messages


class Fetchmail:
    """fetchmail with its own home, rc file and MDA writing one file per message."""

    def __init__(self, server, user, tmp_path, *, keep: bool, implicit_tls: bool) -> None:
        self.home = tmp_path / "home"
        self.out = tmp_path / "delivered"
        self.home.mkdir()
        self.out.mkdir()
        mda = tmp_path / "mda.sh"
        mda.write_text(f'#!/bin/sh\nexec cat > "$(mktemp {self.out}/msg.XXXXXX)"\n')
        mda.chmod(0o755)
        port = server.port("pop3s" if implicit_tls else "pop3")
        tls = "ssl" if implicit_tls else "sslproto 'tls1.2+'"  # STLS on the plain port
        self.rc = self.home / "fetchmailrc"
        self.rc.write_text(
            "set no syslog\n"
            f"poll {server.host} port {port} protocol pop3 uidl timeout 30\n"
            f'  user "{user.address}" there with password "{user.password}"\n'
            f"  {tls} sslcertck sslcertfile {server.cert_file} sslcommonname localhost\n"
            f"  {'keep' if keep else 'nokeep'} mda \"{mda}\"\n")
        self.rc.chmod(0o600)

    def run(self) -> subprocess.CompletedProcess:
        env = dict(os.environ, HOME=str(self.home), FETCHMAILHOME=str(self.home))
        return subprocess.run(["fetchmail", "-f", str(self.rc), "--nodetach", "--idfile",
                               str(self.home / "fetchids"), "-v"],
                              env=env, capture_output=True, text=True, timeout=120)

    def delivered(self) -> list[bytes]:
        return sorted(path.read_bytes() for path in self.out.iterdir())


def check(result: subprocess.CompletedProcess, expected: int) -> None:
    # fetchmail exit codes: 0 mail retrieved, 1 no mail.
    assert result.returncode == expected, result.stdout + result.stderr


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["stls", "pop3s"])
def test_fetchmail_keep(server, user, tmp_path, implicit_tls):
    for n in (1, 2):
        deliver(server, user, message(n))
    fetchmail = Fetchmail(server, user, tmp_path, keep=True, implicit_tls=implicit_tls)
    check(fetchmail.run(), 0)
    got = fetchmail.delivered()
    assert len(got) == 2 and all(b".leading dot line\n" in m or b".leading dot line\r\n" in m for m in got)
    assert {b"Subject: client test 1" in m for m in got} == {True, False}
    assert inbox_count(server, user) == 2  # kept on the server
    check(fetchmail.run(), 1)  # UIDL: nothing new
    deliver(server, user, message(3))
    check(fetchmail.run(), 0)
    assert len(fetchmail.delivered()) == 3
    assert inbox_count(server, user) == 3


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["stls", "pop3s"])
def test_fetchmail_no_keep(server, user, tmp_path, implicit_tls):
    for n in (1, 2, 3):
        deliver(server, user, message(n))
    fetchmail = Fetchmail(server, user, tmp_path, keep=False, implicit_tls=implicit_tls)
    check(fetchmail.run(), 0)
    assert len(fetchmail.delivered()) == 3
    assert inbox_count(server, user) == 0  # deleted at QUIT
    check(fetchmail.run(), 1)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "30", *args],
                          capture_output=True, timeout=60)


def test_curl_pop3_with_stls(server, user):
    for n in (1, 2):
        deliver(server, user, message(n))
    base = f"pop3://{server.host}:{server.port('pop3')}"
    auth = ["--user", f"{user.address}:{user.password}", "--ssl-reqd", "--cacert", server.cert_file]
    listing = curl(*auth, base + "/")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == [b"1 %d" % len(message(1)), b"2 %d" % len(message(2))]
    retr = curl(*auth, base + "/2")
    assert retr.returncode == 0, retr.stderr
    assert retr.stdout == message(2)  # curl unstuffs the leading dot
    uidl = curl(*auth, "--request", "UIDL", base + "/")
    assert uidl.returncode == 0 and len(uidl.stdout.splitlines()) == 2
    dele = curl(*auth, "--request", "DELE", "--head", base + "/1")
    assert dele.returncode == 0, dele.stderr
    assert inbox_count(server, user) == 1


def test_curl_pop3s(server, user):
    deliver(server, user, message(1))
    base = f"pop3s://{server.host}:{server.port('pop3s')}"
    retr = curl("--user", f"{user.address}:{user.password}", "--cacert", server.cert_file, base + "/1")
    assert retr.returncode == 0, retr.stderr
    assert retr.stdout == message(1)
    bad = curl("--user", f"{user.address}:wrong-password", "--cacert", server.cert_file, base + "/1")
    assert bad.returncode == 67  # CURLE_LOGIN_DENIED
    client = poplib.POP3_SSL(server.host, server.port("pop3s"), context=ssl.create_default_context(cafile=server.cert_file))
    client.user(user.address)
    client.pass_(user.password)
    assert client.stat()[0] == 1
    client.quit()
