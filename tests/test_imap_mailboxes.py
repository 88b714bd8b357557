"""Mailbox commands (RFC 3501 §6.3): CREATE/DELETE/RENAME (INBOX rename, children), SUBSCRIBE, LIST/LSUB
wildcards, modified UTF-7 names, SPECIAL-USE (RFC 6154), LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819),
STATUS, NAMESPACE."""
from __future__ import annotations

from .test_imap_support import Raw, deliver, message


def _names(lines, verb=b"LIST"):
    names = []
    for line in lines:
        if line.startswith(b"* " + verb):
            names.append(line.rsplit(b' "/" ', 1)[1].strip(b'"'))
    return names


def test_create_list_delete(server, user):
    raw = Raw(server)
    raw.login(user)
    raw.ok("CREATE Projects/2024/Q1")
    names = _names(raw.ok('LIST "" "Projects/*"'))
    assert names == [b"Projects/2024", b"Projects/2024/Q1"]
    assert _names(raw.ok('LIST "" "%"')).count(b"Projects") == 1
    assert _names(raw.ok('LIST "Projects/" "%"')) == [b"Projects/2024"]
    line = [l for l in raw.ok('LIST "" Projects') if l.startswith(b"* LIST")][0]
    assert b"\\HasChildren" in line
    _, tagged = raw.cmd("CREATE Projects/2024/Q1")
    assert tagged.startswith(b"NO [ALREADYEXISTS]")
    _, tagged = raw.cmd("DELETE Projects")
    assert tagged.startswith(b"NO")
    raw.ok("DELETE Projects/2024/Q1")
    _, tagged = raw.cmd("DELETE Nope")
    assert tagged.startswith(b"NO [NONEXISTENT]")
    _, tagged = raw.cmd("DELETE INBOX")
    assert tagged.startswith(b"NO")
    raw.close()


def test_list_delimiter_and_inbox_case(server, user):
    raw = Raw(server)
    raw.login(user)
    assert raw.ok('LIST "" ""') == [b'* LIST (\\Noselect) "/" ""']
    assert _names(raw.ok('LIST "" inbox')) == [b"INBOX"]
    raw.ok("SELECT inbox")
    raw.ok('STATUS iNbOx (MESSAGES)')
    raw.close()


def test_modified_utf7_names_round_trip(server, user):
    raw = Raw(server)
    raw.login(user)
    raw.ok('CREATE "Entw&APw-rfe"')
    raw.ok('CREATE "R&-D"')
    raw.ok('CREATE "&ZeVnLIqe-"')
    names = _names(raw.ok('LIST "" "*"'))
    assert b"Entw&APw-rfe" in names and b"R&-D" in names and b"&ZeVnLIqe-" in names
    raw.ok('SELECT "Entw&APw-rfe"')
    stored = {mb.name for mb in server.admin.run(server.admin.store.list_mailboxes(user.id))}
    assert {"Entwürfe", "R&D", "日本語"} <= stored
    _, tagged = raw.cmd('CREATE "bad&name"')
    assert tagged.startswith(b"NO")
    raw.close()


def test_names_that_try_to_leave_the_account(server, user):
    raw = Raw(server)
    raw.login(user)
    for name in ("..", "a/../b", "a//b", "/etc", "../other", "a/./b"):
        _, tagged = raw.cmd(f'CREATE "{name}"')
        assert tagged.startswith(b"NO"), (name, tagged)
        _, tagged = raw.cmd(f'SELECT "{name}"')
        assert tagged.startswith(b"NO"), (name, tagged)
    raw.ok("NOOP")
    raw.close()


def test_rename_with_children_and_inbox(server, user):
    deliver(server, user, message("in inbox"))
    raw = Raw(server)
    raw.login(user)
    raw.ok("CREATE Old/Child")
    raw.ok("RENAME Old New")
    names = _names(raw.ok('LIST "" "*"'))
    assert b"New" in names and b"New/Child" in names and b"Old" not in names
    raw.ok("RENAME INBOX Saved")
    assert b"* 0 EXISTS" in raw.ok("SELECT INBOX")
    assert b"* 1 EXISTS" in raw.ok("SELECT Saved")
    _, tagged = raw.cmd("RENAME Nope Other")
    assert tagged.startswith(b"NO")
    _, tagged = raw.cmd("RENAME New Saved")
    assert tagged.startswith(b"NO [ALREADYEXISTS]")
    raw.close()


def test_subscribe_and_lsub(server, user):
    raw = Raw(server)
    raw.login(user)
    raw.ok("CREATE Parent/Kid")
    # CREATE does not subscribe (RFC 3501 §6.3.3).
    assert b"Parent/Kid" not in _names(raw.ok('LSUB "" "*"'), b"LSUB")
    raw.ok("SUBSCRIBE Parent/Kid")
    lsub = raw.ok('LSUB "" "*"')
    assert b"Parent/Kid" in _names(lsub, b"LSUB") and b"Parent" not in _names(lsub, b"LSUB")
    lsub = raw.ok('LSUB "" "%"')
    assert b'* LSUB (\\Noselect) "/" "Parent"' in lsub
    raw.ok("UNSUBSCRIBE Parent/Kid")
    assert b"Parent/Kid" not in _names(raw.ok('LSUB "" "*"'), b"LSUB")
    raw.close()


def test_special_use_list_and_create(server, user):
    raw = Raw(server)
    raw.login(user)
    lines = raw.ok('LIST "" "*"')
    assert any(b"\\Sent" in l and l.endswith(b'"Sent"') for l in lines)
    assert any(b"\\Trash" in l and l.endswith(b'"Trash"') for l in lines)
    only = _names(raw.ok('LIST (SPECIAL-USE) "" "*"'))
    assert b"INBOX" not in only and b"Drafts" in only
    raw.ok("CREATE MyFlagged (USE (\\Flagged))")
    assert any(b"\\Flagged" in l for l in raw.ok('LIST "" MyFlagged'))
    _, tagged = raw.cmd("CREATE Weird (USE (\\Bogus))")
    assert tagged.startswith(b"NO [USEATTR]")
    raw.close()


def test_list_extended_subscribed_children_and_status(server, user):
    deliver(server, user, message("one"))
    raw = Raw(server)
    raw.login(user)
    raw.ok("CREATE Top/Sub")
    raw.ok("SUBSCRIBE Top/Sub")
    lines = raw.ok('LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN)')
    names = _names(lines)
    assert b"Top/Sub" in names and b"Top" not in names
    assert all(b"\\Subscribed" in l for l in lines)
    lines = raw.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert any(l.endswith(b'"/" "Top" ("CHILDINFO" ("SUBSCRIBED"))') for l in lines), lines
    lines = raw.ok('LIST "" ("INBOX" "Top") RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))')
    assert b'* STATUS "INBOX" (MESSAGES 1 UNSEEN 1 UIDNEXT 2)' in lines
    assert any(l.startswith(b'* STATUS "Top"') for l in lines)
    _, tagged = raw.cmd('LIST (RECURSIVEMATCH) "" "*"')
    assert tagged.startswith(b"BAD")
    raw.close()


def test_subscriptions_outlive_their_mailbox(server, user):
    """RFC 3501 §6.3.6: DELETE keeps the subscription, RENAME does not move it (as Dovecot);
    RFC 5258 §3: LIST (SUBSCRIBED) shows the orphan \\NonExistent \\Subscribed, LSUB \\Noselect."""
    raw = Raw(server)
    raw.login(user)
    raw.ok("CREATE Gone")
    raw.ok("SUBSCRIBE Gone")
    raw.ok("DELETE Gone")
    assert raw.ok('LIST (SUBSCRIBED) "" Gone') == [b'* LIST (\\NonExistent \\Subscribed) "/" "Gone"']
    assert raw.ok('LSUB "" Gone') == [b'* LSUB (\\Noselect) "/" "Gone"']
    assert raw.ok('LIST "" Gone') == []
    assert raw.ok('LIST "" Gone RETURN (SUBSCRIBED)') == []
    raw.ok("SUBSCRIBE Never/There")
    lines = raw.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "Never"')
    assert lines == [b'* LIST (\\NonExistent) "/" "Never" ("CHILDINFO" ("SUBSCRIBED"))'], lines
    # CREATE does not subscribe, nor does it drop the name's earlier subscription.
    raw.ok("CREATE Gone")
    assert raw.ok('LSUB "" Gone') == [b'* LSUB () "/" "Gone"']
    raw.ok("CREATE Fresh")
    assert raw.ok('LSUB "" Fresh') == []
    raw.ok("SUBSCRIBE Fresh")
    raw.ok("RENAME Fresh Renamed")
    assert raw.ok('LSUB "" Fresh') == [b'* LSUB (\\Noselect) "/" "Fresh"']
    assert raw.ok('LSUB "" Renamed') == []
    raw.ok("UNSUBSCRIBE Fresh")
    assert raw.ok('LIST (SUBSCRIBED) "" Fresh') == []
    _, tagged = raw.cmd("UNSUBSCRIBE Fresh")
    assert tagged.startswith(b"NO")
    raw.close()


def test_status_and_namespace(server, user):
    deliver(server, user, message("s1"))
    raw = Raw(server)
    raw.login(user)
    lines = raw.ok("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)")
    assert lines[0].startswith(b'* STATUS "INBOX" (MESSAGES 1 RECENT 1 UIDNEXT 2 UIDVALIDITY ')
    _, tagged = raw.cmd("STATUS INBOX (BOGUS)")
    assert tagged.startswith(b"BAD")
    _, tagged = raw.cmd("STATUS Nope (MESSAGES)")
    assert tagged.startswith(b"NO")
    assert raw.ok("NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL']
    raw.close()


def test_id_and_enable(server, user):
    raw = Raw(server)
    assert raw.ok('ID ("name" "test")')[0].startswith(b'* ID ("name" "Casella"')
    raw.ok("ID NIL")
    raw.login(user)
    assert raw.ok("ENABLE CONDSTORE X-UNKNOWN") == [b"* ENABLED CONDSTORE"]
    assert raw.ok("ENABLE CONDSTORE") == [b"* ENABLED"]
    raw.close()
