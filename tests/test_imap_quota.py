"""QUOTA (RFC 9208, STORAGE resource) and APPEND over quota refused with [OVERQUOTA]."""
from __future__ import annotations

from .test_imap_support import Raw, message


def test_quota_reported_and_enforced(server):
    user = server.new_user(quota_bytes=4096)
    raw = Raw(server)
    raw.login(user)
    assert b"QUOTA" in raw.ok("CAPABILITY")[0]
    lines = raw.ok("GETQUOTAROOT INBOX")
    assert lines == [b'* QUOTAROOT "INBOX" ""', b'* QUOTA "" (STORAGE 0 4)']
    data = message("fits", body="x" * 1000 + "\r\n")
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
    assert raw.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 2 4)']
    big = message("too big", body="y" * 4000 + "\r\n")
    _, tagged = raw.cmd(b"APPEND INBOX {%d+}\r\n" % len(big) + big)
    assert tagged.startswith(b"NO [OVERQUOTA]")
    raw.ok("SELECT INBOX")
    for _ in range(2):
        raw.cmd("COPY 1 Archive")
    _, tagged = raw.cmd("COPY 1 Archive")
    assert tagged.startswith(b"NO [OVERQUOTA]")
    _, tagged = raw.cmd('SETQUOTA "" (STORAGE 10)')
    assert tagged.startswith(b"NO")
    _, tagged = raw.cmd('GETQUOTA "other"')
    assert tagged.startswith(b"NO")
    raw.close()


def test_no_quota_means_no_root(server, user):
    raw = Raw(server)
    raw.login(user)
    assert raw.ok("GETQUOTAROOT INBOX") == [b'* QUOTAROOT "INBOX"']
    raw.close()
