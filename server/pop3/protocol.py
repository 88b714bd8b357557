"""POP3 session: `twisted.mail.pop3.POP3` with Casella's commands, STLS, async auth and limits.

Twisted's POP3 gives the line framing, the idle timer and the `blocked` queue
that keeps pipelined commands in order (RFC 2449 §6.6) while an asynchronous
command runs. Everything else is overridden here: Twisted's CAPA advertises
`PIPELINE` and capabilities we do not have, it has no STLS, its error replies
leak exception names and its dot-stuffing breaks on chunk boundaries.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from twisted.cred import error as cred_error
from twisted.internet import task
from twisted.mail import pop3
from twisted.protocols import basic
from twisted.python.failure import Failure

from storage.errors import NotFound

from ..auth import decode_sasl_plain
from ..bridge import as_deferred, as_future
from .maildrop import ClientCredentials, LockedOut, Maildrop, MaildropInUse, to_wire

log = logging.getLogger("casella.pop3")

# Replies (RFC 1939, RFC 2449 response codes, RFC 3206 [SYS/TEMP] and [AUTH]).
GREETING = b"+OK Casella POP3 server ready"
OK_CAPA = b"+OK Capability list follows"
OK_USER = b"+OK Send your password"
OK_LOGGED_IN = b"+OK Logged in, %d messages (%d octets)"
OK_STLS = b"+OK Begin TLS negotiation"
OK_MECHANISMS = b"+OK Supported SASL mechanisms follow"
OK_STAT = b"+OK %d %d"
OK_LIST = b"+OK %d messages (%d octets)"
OK_UIDL = b"+OK Unique-ID listing follows"
OK_RETR = b"+OK %d octets"
OK_TOP = b"+OK Top of message follows"
OK_DELE = b"+OK Message %d deleted"
OK_NOOP = b"+OK"
OK_RSET = b"+OK Maildrop has %d messages (%d octets)"
OK_BYE = b"+OK Casella POP3 server signing off"
OK_BYE_UPDATED = b"+OK Casella POP3 server signing off (%d messages deleted, %d left)"
ERR_UNKNOWN = b"-ERR Unknown command: %s"
ERR_SYNTAX = b"-ERR Syntax error, expected: %s"
ERR_NOT_AUTHENTICATED = b"-ERR Not logged in: authenticate first with USER/PASS or AUTH"
ERR_AUTHENTICATED = b"-ERR Already logged in"
ERR_USER_FIRST = b"-ERR Send USER first"
ERR_AUTH_FAILED = b"-ERR [AUTH] Authentication failed"
ERR_LOCKED_OUT = b"-ERR [SYS/TEMP] Too many failed logins from your address, try again later"
ERR_IN_USE = b"-ERR [IN-USE] Mailbox is locked by another POP3 session, try again later"
ERR_NO_MAILDROP = b"-ERR [SYS/PERM] Maildrop unavailable (no INBOX)"
ERR_PLAINTEXT = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections: "
                 b"use STLS or the pop3s port first")
ERR_MECHANISM = b"-ERR Unsupported SASL mechanism (only PLAIN)"
ERR_AUTH_CANCELLED = b"-ERR Authentication cancelled"
ERR_BASE64 = b"-ERR Invalid base64 data in SASL response"
ERR_AUTHZID = b"-ERR [AUTH] Authorization identity must be empty or match the login"
ERR_TLS_ACTIVE = b"-ERR TLS is already active"
ERR_TLS_UNAVAILABLE = b"-ERR STLS not available on this port"
ERR_BAD_NUMBER = b"-ERR Invalid message number: %s"
ERR_BAD_LINES = b"-ERR Invalid line count: %s"
ERR_NO_SUCH = b"-ERR No such message, only %d messages in maildrop"
ERR_DELETED = b"-ERR Message %d already deleted"
ERR_VANISHED = b"-ERR Message %d is no longer available (removed by another session)"
ERR_TOO_MANY_BAD = b"-ERR Too many bad commands, closing connection"
ERR_TOO_LONG = b"-ERR Line too long, closing connection"
ERR_TOO_MANY = b"-ERR [SYS/TEMP] Too many connections from your address, try again later"
ERR_TIMEOUT = b"-ERR Idle timeout, closing connection"
ERR_INTERNAL = b"-ERR [SYS/TEMP] Internal server error, try again later"
ERR_UPDATE = b"-ERR [SYS/TEMP] Deletions not applied, nothing was removed"
ERR_LOCK_LOST = b"-ERR [SYS/TEMP] Maildrop lock lost, deletions not applied"

# Messages larger than this are converted to wire form in a thread and sent by a producer.
_LARGE = 256 * 1024
# Seconds a closing connection may take to finish its TLS shutdown before it is aborted.
_CLOSE_GRACE = 5.0
# Process-wide part of the lock holder id: unique across hosts and processes.
_HOLDER_PREFIX = f"{socket.gethostname()}:{os.getpid()}:"

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
ANY = "ANY"

# command -> (handler, minimum args, maximum args, state, usage); RFC 1939 §3 keywords are case-insensitive.
COMMANDS: dict[bytes, tuple[str, int, int, str, bytes]] = {
    b"CAPA": ("do_CAPA", 0, 0, ANY, b"CAPA"),
    b"QUIT": ("do_QUIT", 0, 0, ANY, b"QUIT"),
    b"STLS": ("do_STLS", 0, 0, AUTHORIZATION, b"STLS"),
    b"USER": ("do_USER", 1, 1, AUTHORIZATION, b"USER name"),
    b"PASS": ("do_PASS", 1, 1, AUTHORIZATION, b"PASS password"),
    b"AUTH": ("do_AUTH", 0, 2, AUTHORIZATION, b"AUTH PLAIN [initial-response]"),
    b"STAT": ("do_STAT", 0, 0, TRANSACTION, b"STAT"),
    b"LIST": ("do_LIST", 0, 1, TRANSACTION, b"LIST [msg]"),
    b"UIDL": ("do_UIDL", 0, 1, TRANSACTION, b"UIDL [msg]"),
    b"RETR": ("do_RETR", 1, 1, TRANSACTION, b"RETR msg"),
    b"TOP": ("do_TOP", 2, 2, TRANSACTION, b"TOP msg lines"),
    b"DELE": ("do_DELE", 1, 1, TRANSACTION, b"DELE msg"),
    b"NOOP": ("do_NOOP", 0, 0, TRANSACTION, b"NOOP"),
    b"RSET": ("do_RSET", 0, 0, TRANSACTION, b"RSET"),
}


class _ChunkSender(basic.FileSender):
    CHUNK_SIZE = 256 * 1024


class Pop3Session(pop3.POP3):
    """One POP3 connection. `self.mbox` is the `Maildrop` once logged in."""

    def __init__(self, factory) -> None:  # noqa: ANN001 - Pop3Factory
        self.factory = factory
        self.app = factory.app
        self.settings = factory.app.settings.pop3
        # setTimeout(None) also clears timeOut, so the configured value lives here too.
        self.idle_timeout = self.settings.idle_timeout
        self.timeOut = self.idle_timeout
        self.MAX_LENGTH = self.settings.max_line_length
        self.portal = factory.portal
        self.holder = _HOLDER_PREFIX + uuid.uuid4().hex
        self.tls_active = factory.implicit_tls
        self.peer_host = "?"
        self.account_address: str | None = None
        self._user: str | None = None
        self._conn_key: tuple[str, str] | None = None
        self._discard_pipelined = False
        self._closing = False
        self._lock_refresher: task.LoopingCall | None = None
        self._lock_lost = False
        self._abort_call = None
        self._transferring = False
        self._bad_commands = 0
        self._started = time.monotonic()
        self._end = "drop"
        self._stats = {"retr": 0, "top": 0, "dele": 0, "applied": 0, "octets": 0}

    # ------------------------------------------------------------ connection

    def connectionMade(self) -> None:  # noqa: N802
        self.peer_host = getattr(self.transport.getPeer(), "host", "?")
        self.factory.live_protocols.add(self)
        key = ("pop3", self.peer_host)
        if not self.app.connections.acquire(key, self.settings.max_connections_per_ip):
            self._end = "limit"
            self._close_with(ERR_TOO_MANY)
            return
        self._conn_key = key
        self.sendLine(GREETING)
        self.setTimeout(self.idle_timeout)

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        self.setTimeout(None)
        self._closing = True
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self._lock_refresher is not None and self._lock_refresher.running:
            self._lock_refresher.stop()
        if self._conn_key is not None:
            self.app.connections.release(self._conn_key)
            self._conn_key = None
        self._log_session()
        if self.mbox is not None:
            # RFC 1939 §6: no QUIT, no UPDATE state: deletions are forgotten, only the lock goes.
            self.mbox.release().addBoth(lambda _: self.factory.live_protocols.discard(self))
        else:
            self.factory.live_protocols.discard(self)

    def timeoutConnection(self) -> None:  # noqa: N802
        # RFC 1939 §3: an idle session is closed without entering the UPDATE state.
        self._end = "timeout"
        if self._transferring:
            # Stalled in the middle of a message body: no reply can be framed, just go.
            self._closing = True
            self.blocked = None
            if self.mbox is not None:
                self.mbox.release()
            self.transport.abortConnection()
            return
        self._close_with(ERR_TIMEOUT)

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        self._end = "line-too-long"
        self._close_with(ERR_TOO_LONG)

    def _close_with(self, reply: bytes) -> None:
        self._closing = True
        self.blocked = None
        self.sendLine(reply)
        if self.mbox is not None:
            self.mbox.release()  # the session is over: no need to wait for the TCP close
        self.transport.loseConnection()
        # A TLS close waits for the peer's close_notify; a silent peer must not hold the slot.
        from twisted.internet import reactor

        self._abort_call = reactor.callLater(_CLOSE_GRACE, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        # Anything that came with STLS in one packet was plaintext; this is the TLS stream.
        self._discard_pipelined = False
        super().dataReceived(data)

    def _log_session(self) -> None:
        duration = time.monotonic() - self._started
        tls = "implicit" if self.factory.implicit_tls else ("stls" if self.tls_active else "none")
        fields = {"peer": self.peer_host, "listener": self.factory.name, "tls": tls,
                  "user": self.account_address or "-", **self._stats, "end": self._end,
                  "duration": round(duration, 3)}
        log.info("session " + " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})

    # ------------------------------------------------------------ dispatch

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self._closing or self._discard_pipelined:
            return
        self.resetTimeout()
        if self.state == "AUTH":
            self.state_AUTH(line)
        else:
            self.state_COMMAND(line)

    def state_COMMAND(self, line: bytes) -> None:  # noqa: N802
        command, _, rest = line.partition(b" ")
        self.processCommand(command, rest)

    def processCommand(self, command: bytes, rest: bytes = b"") -> None:  # noqa: N802
        if self._closing or self._discard_pipelined:
            return
        if self.blocked is not None:
            # RFC 2449 §6.6: pipelined commands wait, in order, for the one in progress.
            self.blocked.append((command, (rest,)))
            return
        name = command.upper()
        spec = COMMANDS.get(name)
        if spec is None:
            self._bad_command(ERR_UNKNOWN % _printable(name))
            return
        handler, least, most, state, usage = spec
        if state == TRANSACTION and self.mbox is None:
            self.sendLine(ERR_NOT_AUTHENTICATED)
            return
        if state == AUTHORIZATION and self.mbox is not None:
            self.sendLine(ERR_AUTHENTICATED)
            return
        if name == b"PASS":
            # RFC 1939 §7: the password is the rest of the line, spaces included.
            args = [rest] if rest else []
        else:
            args = rest.split()
        if not least <= len(args) <= most:
            self._bad_command(ERR_SYNTAX % usage)
            return
        try:
            getattr(self, handler)(*args)
        except Exception:
            log.exception("pop3 %s failed for %s", name.decode("ascii", "replace"), self.peer_host)
            self.sendLine(ERR_INTERNAL)

    def _bad_command(self, reply: bytes) -> None:
        self._bad_commands += 1
        if self._bad_commands >= self.settings.max_bad_commands:
            # Not a mail client (or a broken one): stop feeding it, as Dovecot does.
            self._end = "bad-commands"
            self._close_with(reply + b"\r\n" + ERR_TOO_MANY_BAD)
            return
        self.sendLine(reply)

    def _run(self, coro) -> None:  # noqa: ANN001
        """Run an async command: later commands queue in `blocked`, the idle timer pauses."""
        self.setTimeout(None)
        self.blocked = []
        d = as_deferred(coro)

        def failed(failure: Failure) -> None:
            if self._closing:
                log.debug("pop3 command ended with the connection: %s", failure.getErrorMessage())
                return
            log.error("pop3 command failed for %s: %s", self.peer_host, failure.getTraceback())
            self.sendLine(ERR_INTERNAL)

        def resume(_: object) -> None:
            if self._closing:
                self.blocked = None
                return
            self.setTimeout(self.idle_timeout)
            self._unblock(None)

        d.addErrback(failed)
        d.addBoth(resume)

    def _send_lines(self, first: bytes, lines: list[bytes]) -> None:
        """A multi-line response (RFC 1939 §3) in one write."""
        self.transport.write(b"\r\n".join([first, *lines, b"."]) + b"\r\n")

    # ------------------------------------------------------------ AUTHORIZATION state

    def capabilities(self) -> list[bytes]:
        """RFC 2449 §6: exactly what this server does."""
        caps = [b"TOP", b"UIDL", b"USER", b"SASL PLAIN"]
        if (self.factory.starttls and not self.tls_active and self.mbox is None
                and self.app.tls is not None):
            caps.append(b"STLS")  # RFC 2595 §4: only before TLS and before login
        caps += [b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"IMPLEMENTATION casella"]
        return caps

    def do_CAPA(self) -> None:  # noqa: N802
        self._send_lines(OK_CAPA, self.capabilities())

    def do_STLS(self) -> None:  # noqa: N802
        if self.tls_active:
            self.sendLine(ERR_TLS_ACTIVE)
            return
        if not self.factory.starttls or self.app.tls is None:
            self.sendLine(ERR_TLS_UNAVAILABLE)
            return
        self.sendLine(OK_STLS)
        self.transport.startTLS(self.app.tls.twisted_factory)
        self.tls_active = True
        self._user = None
        # RFC 2595 §4 / CVE-2011-0411: nothing sent before the handshake may be acted on.
        self._discard_pipelined = True
        self._buffer = b""

    def _plaintext_refused(self) -> bool:
        # RFC 2595 §3.1: plaintext passwords only over TLS (or loopback, as configured).
        if self.app.throttle.plaintext_allowed(self.peer_host, self.tls_active):
            return False
        self.sendLine(ERR_PLAINTEXT)
        return True

    def do_USER(self, name: bytes) -> None:  # noqa: N802
        if self._plaintext_refused():
            return
        self._user = name.decode("utf-8", "replace")
        self.sendLine(OK_USER)

    def do_PASS(self, password: bytes) -> None:  # noqa: N802
        if self._user is None:
            self.sendLine(ERR_USER_FIRST)
            return
        if self._plaintext_refused():
            return
        user, self._user = self._user, None
        self._run(self._login(user, password.decode("utf-8", "replace")))

    def do_AUTH(self, mechanism: bytes | None = None, initial: bytes | None = None) -> None:  # noqa: N802
        if mechanism is None:
            # Not in RFC 5034, but old clients list mechanisms this way.
            self._send_lines(OK_MECHANISMS, [b"PLAIN"])
            return
        if mechanism.upper() != b"PLAIN":
            self.sendLine(ERR_MECHANISM)
            return
        if self._plaintext_refused():
            return
        if initial is None:
            self.state = "AUTH"
            self.sendLine(b"+ ")  # RFC 5034 §4: empty challenge for PLAIN
            return
        # RFC 5034 §4: "=" is an empty initial response.
        self._sasl_plain(b"" if initial == b"=" else initial)

    def state_AUTH(self, line: bytes) -> None:  # noqa: N802
        self.state = "COMMAND"
        if line.strip() == b"*":
            self.sendLine(ERR_AUTH_CANCELLED)  # RFC 5034 §4: the client cancelled
            return
        self._sasl_plain(line)

    def _sasl_plain(self, data: bytes) -> None:
        decoded = decode_sasl_plain(data)
        if decoded is None:
            self.sendLine(ERR_BASE64)
            return
        authzid, authcid, password = decoded
        if authzid and authzid != authcid:
            self.sendLine(ERR_AUTHZID)
            return
        self._run(self._login(authcid, password))

    async def _login(self, username: str, password: str) -> None:
        credentials = ClientCredentials(username, password, self.peer_host)
        try:
            _, maildrop, logout = await as_future(self.portal.login(credentials, self, pop3.IMailbox))
        except MaildropInUse:
            self.sendLine(ERR_IN_USE)  # RFC 2449 §8.1.1
            return
        except LockedOut:
            self.sendLine(ERR_LOCKED_OUT)
            return
        except cred_error.UnauthorizedLogin:
            self.sendLine(ERR_AUTH_FAILED)  # RFC 3206 §4 [AUTH]
            return
        except NotFound as exc:
            log.warning("pop3 login of %s: maildrop unavailable: %s", username, exc)
            self.sendLine(ERR_NO_MAILDROP)
            return
        except cred_error.LoginDenied as exc:
            log.warning("pop3 login of %s refused: %s", username, exc)
            self.sendLine(ERR_AUTH_FAILED)
            return
        if self._closing:
            await as_future(maildrop.release())  # the client left while we were logging in
            return
        self.mbox: Maildrop = maildrop
        self._onLogout = logout
        self.account_address = maildrop.account.address
        refresh_every = self.settings.maildrop_lock_seconds / 3
        self._lock_refresher = task.LoopingCall(self._refresh_lock)
        self._lock_refresher.start(refresh_every, now=False)
        self.sendLine(OK_LOGGED_IN % (len(maildrop), maildrop.live_octets()))

    def _refresh_lock(self) -> None:
        def done(held: bool) -> None:
            if not held and not self._lock_lost:
                self._lock_lost = True
                log.warning("pop3 maildrop lock of %s lost; this session's deletions will not apply",
                            self.account_address)

        as_deferred(self.mbox.refresh_lock()).addCallbacks(
            done, lambda f: log.warning("maildrop lock refresh failed: %s", f.getErrorMessage()))

    # ------------------------------------------------------------ TRANSACTION state

    def _message(self, arg: bytes, *, allow_deleted: bool = False) -> int | None:
        """0-based index for a message-number argument, or None after replying -ERR."""
        if not arg.isdigit() or int(arg) < 1:
            self.sendLine(ERR_BAD_NUMBER % _printable(arg))
            return None
        number = int(arg)
        if number > len(self.mbox):
            self.sendLine(ERR_NO_SUCH % len(self.mbox))
            return None
        if not allow_deleted and number - 1 in self.mbox.deleted:
            self.sendLine(ERR_DELETED % number)  # RFC 1939 §5: deleted messages may not be referenced
            return None
        return number - 1

    def do_STAT(self) -> None:  # noqa: N802
        self.sendLine(OK_STAT % (len(self.mbox.live()), self.mbox.live_octets()))

    def do_LIST(self, arg: bytes | None = None) -> None:  # noqa: N802
        if arg is not None:
            index = self._message(arg)
            if index is not None:
                self.sendLine(b"+OK %d %d" % (index + 1, self.mbox.meta(index).size))
            return
        live = self.mbox.live()
        lines = [b"%d %d" % (i + 1, self.mbox.meta(i).size) for i in live]
        self._send_lines(OK_LIST % (len(live), self.mbox.live_octets()), lines)

    def do_UIDL(self, arg: bytes | None = None) -> None:  # noqa: N802
        if arg is not None:
            index = self._message(arg)
            if index is not None:
                self.sendLine(b"+OK %d %s" % (index + 1, self.mbox.uidl(index).encode("ascii")))
            return
        lines = [b"%d %s" % (i + 1, self.mbox.uidl(i).encode("ascii")) for i in self.mbox.live()]
        self._send_lines(OK_UIDL, lines)

    def do_RETR(self, arg: bytes) -> None:  # noqa: N802
        index = self._message(arg)
        if index is not None:
            self._retrieve(index, None)

    def do_TOP(self, arg: bytes, lines: bytes) -> None:  # noqa: N802
        if not lines.isdigit():
            self.sendLine(ERR_BAD_LINES % _printable(lines))  # RFC 1939 §7: non-negative number
            return
        index = self._message(arg)
        if index is not None:
            self._retrieve(index, int(lines))

    def _retrieve(self, index: int, body_lines: int | None) -> None:
        raw = self.mbox.read_ahead(index)
        if raw is not None and len(raw) <= _LARGE:
            self._write_message(index, body_lines, to_wire(raw, body_lines))  # no I/O: answer at once
        else:
            self._run(self._send_message(index, body_lines, raw))

    def _write_message(self, index: int, body_lines: int | None, wire: bytes) -> None:
        meta = self.mbox.meta(index)
        self.transport.write((OK_TOP if body_lines is not None else OK_RETR % meta.size) + b"\r\n" + wire)
        self._stats["top" if body_lines is not None else "retr"] += 1
        self._stats["octets"] += len(wire)

    async def _send_message(self, index: int, body_lines: int | None, raw: bytes | None = None) -> None:
        meta = self.mbox.meta(index)
        if raw is None:
            try:
                raw = await self.mbox.read(index)
            except NotFound:
                self.sendLine(ERR_VANISHED % (index + 1))
                return
        if len(raw) > _LARGE:  # scanning megabytes for bare LF and leading dots: off the loop
            wire = await asyncio.to_thread(to_wire, raw, body_lines)
        else:
            wire = to_wire(raw, body_lines)
        if self._closing:
            return
        if len(wire) <= _LARGE:
            self._write_message(index, body_lines, wire)
            return
        self.sendLine(OK_TOP if body_lines is not None else OK_RETR % meta.size)
        # A pull producer: the loop sends 256 KB at a time as the socket drains. A client
        # that stops reading for the idle timeout is dropped (progress resets the timer).
        self._transferring = True
        self.setTimeout(self.idle_timeout)
        try:
            reader = _BytesReader(wire, self.resetTimeout)
            await as_future(_ChunkSender().beginFileTransfer(reader, self.transport))
        finally:
            self._transferring = False
            self.setTimeout(None)
        self._stats["top" if body_lines is not None else "retr"] += 1
        self._stats["octets"] += len(wire)

    def do_DELE(self, arg: bytes) -> None:  # noqa: N802
        index = self._message(arg)
        if index is not None:
            self.mbox.deleteMessage(index)  # RFC 1939 §5: only marked; applied at QUIT
            self._stats["dele"] += 1
            self.sendLine(OK_DELE % (index + 1))

    def do_NOOP(self) -> None:  # noqa: N802
        self.sendLine(OK_NOOP)

    def do_RSET(self) -> None:  # noqa: N802
        self.mbox.undeleteMessages()
        self.sendLine(OK_RSET % (len(self.mbox), self.mbox.live_octets()))

    # ------------------------------------------------------------ QUIT / UPDATE state

    def do_QUIT(self) -> None:  # noqa: N802
        if self.mbox is None:
            self._end = "quit"
            self._close_with(OK_BYE)
            return
        self._run(self._update())

    async def _update(self) -> None:
        """RFC 1939 §6: apply the deletions in one transaction, release the lock, say goodbye."""
        self._end = "quit"
        maildrop: Maildrop = self.mbox
        if self._lock_refresher is not None and self._lock_refresher.running:
            self._lock_refresher.stop()
        reply = None
        if self._lock_lost and maildrop.deleted:
            reply = ERR_LOCK_LOST
        else:
            try:
                self._stats["applied"] = await maildrop.apply_deletes()
            except Exception:
                log.exception("pop3 QUIT: deletions of %s not applied", self.account_address)
                reply = ERR_UPDATE
        # The lock is released in the background (_close_with); a new login waits for it.
        if reply is None:
            reply = OK_BYE_UPDATED % (len(maildrop.deleted), len(maildrop) - len(maildrop.deleted))
        self._close_with(reply)



class _BytesReader:
    """A file-like view on bytes for FileSender, without BytesIO's copy."""

    def __init__(self, data: bytes, on_read=None) -> None:  # noqa: ANN001
        self._view = memoryview(data)
        self._pos = 0
        self._on_read = on_read

    def read(self, size: int) -> bytes:
        chunk = self._view[self._pos:self._pos + size]
        self._pos += len(chunk)
        if self._on_read is not None:
            self._on_read()
        return bytes(chunk)


def _printable(value: bytes, limit: int = 40) -> bytes:
    text = bytes(b if 32 <= b < 127 else 63 for b in value[:limit])
    return text + (b"..." if len(value) > limit else b"")
