"""Real clients from Debian: mbsync (isync) two-way sync and curl imap:// / imaps://."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from .test_imap_support import deliver, login, message


def _run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (isync) not installed")
def test_mbsync_two_way_sync(server, user, tmp_path):
    deliver(server, user, message("first"))
    deliver(server, user, message("second"))
    maildir = tmp_path / "mail"
    maildir.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(f"""IMAPAccount casella
Host {server.host}
Port {server.port('imap')}
User {user.address}
Pass {user.password}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account casella

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns INBOX Archive
Create Both
Expunge Both
SyncState *
""")
    def sync():
        result = _run(["mbsync", "-c", str(config), "-a"])
        assert result.returncode == 0, result.stdout + result.stderr

    sync()
    inbox = maildir / "INBOX"
    files = sorted((inbox / "new").iterdir()) + sorted((inbox / "cur").iterdir())
    assert len(files) == 2
    # Local changes: mark one seen, add one new message.
    seen = files[0]
    target = inbox / "cur" / (seen.name.split(":")[0] + ":2,S")
    os.rename(seen, target)
    (inbox / "new" / f"{int(time.time())}.local.host").write_bytes(message("local").replace(b"\r\n", b"\n"))
    sync()
    client = login(server, user)
    client.select("INBOX")
    typ, data = client.search(None, "ALL")
    assert len(data[0].split()) == 3
    typ, data = client.search(None, "SEEN")
    assert len(data[0].split()) == 1
    typ, data = client.search(None, 'SUBJECT "local"')
    assert len(data[0].split()) == 1
    # Server-side deletion reaches the Maildir.
    client.store("1", "+FLAGS", "\\Deleted")
    client.expunge()
    client.logout()
    sync()
    remaining = list((inbox / "new").iterdir()) + list((inbox / "cur").iterdir())
    assert len(remaining) == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_imap_and_imaps(server, user, tmp_path):
    deliver(server, user, message("for curl"))
    credentials = f"{user.address}:{user.password}"
    listing = _run(["curl", "-sS", "--user", credentials, f"imap://{server.host}:{server.port('imap')}/"])
    assert listing.returncode == 0, listing.stderr
    assert '"INBOX"' in listing.stdout or " INBOX" in listing.stdout
    fetched = _run(["curl", "-sS", "--user", credentials,
                    f"imap://{server.host}:{server.port('imap')}/INBOX;UID=1"])
    assert fetched.returncode == 0, fetched.stderr
    assert "Subject: for curl" in fetched.stdout
    fetched = _run(["curl", "-sS", "--cacert", server.cert_file, "--resolve",
                    f"localhost:{server.port('imaps')}:{server.host}", "--user", credentials,
                    f"imaps://localhost:{server.port('imaps')}/INBOX;UID=1"])
    assert fetched.returncode == 0, fetched.stderr
    assert "Subject: for curl" in fetched.stdout
    upload = tmp_path / "upload.eml"
    upload.write_bytes(message("uploaded by curl"))
    result = _run(["curl", "-sS", "--user", credentials, "-T", str(upload),
                   f"imap://{server.host}:{server.port('imap')}/INBOX"])
    assert result.returncode == 0, result.stderr
    searched = _run(["curl", "-sS", "--user", credentials, "-X", 'SEARCH SUBJECT "uploaded"',
                     f"imap://{server.host}:{server.port('imap')}/INBOX"])
    assert "* SEARCH 2" in searched.stdout, searched.stdout + searched.stderr
