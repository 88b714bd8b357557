"""COMPRESS=DEFLATE (RFC 4978): raw DEFLATE both ways after the tagged OK, pipelined data included."""
from __future__ import annotations

import zlib

from .test_imap_support import Raw, deliver, message


class Deflated:
    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inp = zlib.decompressobj(-15)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.raw.sock.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def until(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.raw.sock.recv(65536)
                assert chunk, "connection closed"
                self.buf += self.inp.decompress(chunk)
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines


def test_compress_deflate_round_trip(server, user):
    deliver(server, user, message("compressed " * 50))
    raw = Raw(server)
    raw.login(user)
    assert b"COMPRESS=DEFLATE" in raw.ok("CAPABILITY")[0]
    raw.send(b"z1 COMPRESS DEFLATE\r\n")
    assert raw.line() == b"z1 OK DEFLATE active"
    z = Deflated(raw)
    z.send(b"z2 SELECT INBOX\r\nz3 FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]\r\n")
    assert z.until(b"z2")[-1].startswith(b"z2 OK")
    lines = z.until(b"z3")
    assert lines[-1].startswith(b"z3 OK") and any(b"Subject: compressed" in line for line in lines)
    z.send(b"z4 COMPRESS DEFLATE\r\n")
    assert z.until(b"z4")[-1].startswith(b"z4 NO [COMPRESSIONACTIVE]")
    # A literal inside the compressed stream, pipelined with the next command (as mbsync does).
    data = message("appended compressed")
    z.send(b"z6 CHECK\r\nz7 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\nz8 NOOP\r\n")
    assert z.until(b"z7")[-1].startswith(b"z7 OK [APPENDUID")
    assert z.until(b"z8")[-1].startswith(b"z8 OK")
    z.send(b"z5 LOGOUT\r\n")
    assert z.until(b"z5")[-1].startswith(b"z5 OK")
    raw.close()


def test_compress_bad_mechanism(server, user):
    raw = Raw(server)
    raw.login(user)
    _, tagged = raw.cmd("COMPRESS LZ4")
    assert tagged.startswith(b"BAD")
    raw.ok("NOOP")
    raw.close()
