"""One account never reaches another's mailboxes, whatever the name (DESIGN.md invariant)."""
from __future__ import annotations

from .test_imap_support import Raw, deliver, message


def test_other_accounts_mailboxes_unreachable(server, user):
    other = server.new_user()
    deliver(server, other, message("secret"))
    raw = Raw(server)
    raw.login(user)
    names = [other.address, f"{other.address}/INBOX", f"~{other.address}/INBOX", "../" + other.address,
             f"#shared/{other.address}", f"/INBOX", f"user/{other.address.split('@')[0]}", "%"]
    for name in names:
        for command in (f'SELECT "{name}"', f'STATUS "{name}" (MESSAGES)', f'DELETE "{name}"',
                        f'RENAME "{name}" Mine'):
            _, tagged = raw.cmd(command)
            assert tagged.startswith((b"NO", b"BAD")), (command, tagged)
    lines = raw.ok('LIST "" "*"')
    assert not any(other.address.encode() in line for line in lines)
    raw.ok("SELECT INBOX")
    assert raw.ok("SEARCH ALL") == [b"* SEARCH"]
    assert raw.ok("UID FETCH 1:* FLAGS") == []
    raw.close()
