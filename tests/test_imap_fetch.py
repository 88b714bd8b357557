"""FETCH (RFC 3501 §6.4.5, §7.4.2): ENVELOPE, BODYSTRUCTURE, BODY[section]<partial>, \\Seen rules,
a 10 MB message byte-exact, all answered from the parse cache by slicing raw bytes."""
from __future__ import annotations

import hashlib
import os
import re

from .test_imap_support import Raw, deliver, login, message

NESTED = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test, Carol <carol@example.test>\r\n"
    b"Subject: nested\r\n"
    b"Date: Tue, 1 Feb 2022 10:00:00 +0100\r\n"
    b"Message-ID: <nested@t>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"caf=E9\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>caf\xc3\xa9</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Disposition: attachment; filename=\"fwd.eml\"\r\n"
    b"\r\n"
    b"From: Dave <dave@example.test>\r\n"
    b"Subject: inner message\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--outer\r\n"
    b"Content-Type: application/octet-stream; name=\"x.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--outer--\r\n"
    b"epilogue\r\n"
)


def _one(raw, command):
    untagged = raw.ok(command)
    fetches = [line for line in untagged if re.match(rb"\* \d+ FETCH", line)]
    assert len(fetches) == 1, untagged
    return fetches[0]


def test_envelope_and_simple_items(server, user):
    deliver(server, user, message("hello \"quoted\" world"))
    raw = Raw(server)
    raw.login(user)
    raw.ok("SELECT INBOX")
    line = _one(raw, "FETCH 1 (UID FLAGS RFC822.SIZE ENVELOPE)")
    assert b'ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "hello \\"quoted\\" world" (("Alice" NIL "alice" ' \
           b'"example.test")) (("Alice" NIL "alice" "example.test")) (("Alice" NIL "alice" "example.test")) ' \
           b'((NIL NIL "bob" "example.test")) NIL NIL NIL "<hello.\\"quoted\\".world@t>")' in line
    assert re.search(rb"RFC822.SIZE \d+", line) and b"UID 1" in line
    line = _one(raw, "FETCH 1 (INTERNALDATE)")
    assert re.search(rb'INTERNALDATE "\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"', line)
    raw.close()


def test_bodystructure_nested_multipart_and_rfc822(server, user):
    deliver(server, user, NESTED)
    raw = Raw(server)
    raw.login(user)
    raw.ok("EXAMINE INBOX")
    line = _one(raw, "FETCH 1 BODYSTRUCTURE")
    expected = (
        b'(BODYSTRUCTURE ((("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 6 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 12 1 NIL NIL NIL NIL) "alternative" ("boundary" "inner")'
        b' NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 68 (NIL "inner message" (("Dave" NIL "dave" '
        b'"example.test")) (("Dave" NIL "dave" "example.test")) (("Dave" NIL "dave" "example.test")) NIL NIL NIL NIL'
        b' NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL NIL NIL) 4 NIL ("attachment" '
        b'("filename" "fwd.eml")) NIL NIL)("application" "octet-stream" ("name" "x.bin") NIL NIL "base64" 8 NIL NIL'
        b' NIL NIL) "mixed" ("boundary" "outer") NIL NIL NIL))'
    )
    assert line.split(b" ", 3)[3] == expected, line
    body = _one(raw, "FETCH 1 BODY")
    assert b"BODY ((" in body and b"boundary" not in body  # BODY has no extension data
    raw.close()


def test_body_sections(server, user):
    deliver(server, user, NESTED)
    raw = Raw(server)
    raw.login(user)
    raw.ok("EXAMINE INBOX")

    def section(spec):
        line = _one(raw, f"FETCH 1 BODY.PEEK[{spec}]")
        match = re.search(rb"\{(\d+)\}\r\n", line)
        return line[match.end():match.end() + int(match.group(1))]

    assert section("1.1") == b"caf=E9"
    assert section("1.2") == b"<p>caf\xc3\xa9</p>"
    assert section("1.1.MIME") == b"Content-Type: text/plain; charset=iso-8859-1\r\n" \
                                  b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    assert section("2.HEADER") == b"From: Dave <dave@example.test>\r\nSubject: inner message\r\n\r\n"
    assert section("2.TEXT") == b"inner body"
    assert section("2.1") == b"inner body"
    assert section("3") == b"AAECAw=="
    assert section("HEADER.FIELDS (SUBJECT TO)") == \
        b"To: bob@example.test, Carol <carol@example.test>\r\nSubject: nested\r\n\r\n"
    assert b"Subject" not in section("HEADER.FIELDS.NOT (SUBJECT)")
    assert section("TEXT").startswith(b"preamble\r\n--outer")
    assert section("") == NESTED
    assert section("9") == b""
    raw.close()


def test_seen_set_by_body_fetch_not_by_peek_or_examine(server, user):
    deliver(server, user, message("seen"))
    raw = Raw(server)
    raw.login(user)
    raw.ok("EXAMINE INBOX")
    raw.ok("FETCH 1 BODY[]")
    raw.ok("SELECT INBOX")
    assert b"\\Seen" not in _one(raw, "FETCH 1 FLAGS")
    raw.ok("FETCH 1 BODY.PEEK[]")
    raw.ok("FETCH 1 RFC822.HEADER")
    assert b"\\Seen" not in _one(raw, "FETCH 1 FLAGS")
    line = _one(raw, "FETCH 1 BODY[TEXT]")
    assert b"FLAGS (\\Seen" in line
    raw.close()


def test_macros_and_rfc822_items(server, user):
    deliver(server, user, message("macros"))
    client = login(server, user)
    client.select("INBOX", readonly=True)
    for macro in ("ALL", "FAST", "FULL"):
        typ, data = client.fetch("1", macro)
        assert typ == "OK" and b"FLAGS" in data[0]
    typ, data = client.fetch("1", "(RFC822.HEADER RFC822.TEXT)")
    assert data[0][1].startswith(b"From: Alice") and data[1][1] == b"body text\r\n"
    client.logout()


def test_ten_megabytes_byte_exact_and_partial(server, user):
    body = os.urandom(7 * 1024 * 1024)
    import base64

    encoded = base64.encodebytes(body).replace(b"\n", b"\r\n")
    raw_message = (b"From: big@example.test\r\nSubject: big\r\nContent-Type: application/octet-stream\r\n"
                   b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded)
    assert len(raw_message) > 9 * 1024 * 1024
    client = login(server, user)
    typ, data = client.append("INBOX", None, None, raw_message)
    assert typ == "OK", data
    client.select("INBOX")
    typ, data = client.fetch("1", "(BODY.PEEK[])")
    assert hashlib.sha256(data[0][1]).digest() == hashlib.sha256(raw_message).digest()
    # Thunderbird-style chunks.
    chunks, offset = [], 0
    while offset < len(raw_message):
        typ, data = client.fetch("1", f"(BODY.PEEK[]<{offset}.1048576>)")
        assert data[0][0].endswith(b"BODY[]<%d> {%d}" % (offset, min(1048576, len(raw_message) - offset)))
        chunks.append(data[0][1])
        offset += 1048576
    assert b"".join(chunks) == raw_message
    typ, data = client.fetch("1", f"(BODY.PEEK[]<{len(raw_message) + 10}.100>)")
    assert typ == "OK" and (data[0][1] == b"" if isinstance(data[0], tuple) else b'""' in data[0])
    client.logout()


def test_fetch_bad_arguments_answered_bad(server, user):
    deliver(server, user, message("bad"))
    raw = Raw(server)
    raw.login(user)
    raw.ok("SELECT INBOX")
    for command in ("FETCH 1 (FLAGS", "FETCH 1 NOSUCHITEM", "FETCH 0 FLAGS", "FETCH 5 FLAGS", "FETCH a:b FLAGS",
                    "FETCH 1 BODY[1.MIMEX]", "FETCH 1 BODY[]<0.0>", "FETCH", "FETCH 1"):
        _, tagged = raw.cmd(command)
        assert tagged.startswith(b"BAD"), (command, tagged)
    raw.ok("FETCH 1 FLAGS")
    raw.close()
