"""IMAP4rev1 server session (RFC 3501) on Twisted's IMAP4Server, over the shared MailStore.

Twisted gives the connection machinery: LineReceiver framing, STARTTLS
(`transport.startTLS`), the idle timeout (TimeoutMixin). Command assembly
(lines + literals, RFC 7888 LITERAL+), argument syntax (parser.py) and every
command handler are ours, because Twisted's parsers mishandle quoted escapes
and nested lists and its mailbox interfaces are synchronous. Each command
runs as an asyncio task while reading is paused, so commands are processed in
order and nothing blocks the loop.

Implemented: RFC 3501 (all commands), 2177 IDLE, 4315 UIDPLUS, 6851 MOVE,
2342 NAMESPACE, 2971 ID, 5161 ENABLE, 3691 UNSELECT, 6154 SPECIAL-USE (LIST
attributes and CREATE USE), 5258 LIST-EXTENDED, 5819 LIST-STATUS, 3348
CHILDREN, 7162 CONDSTORE/QRESYNC, 9208 QUOTA (STORAGE resource, no
SETQUOTA), 7889 APPENDLIMIT, 4959 SASL-IR with AUTHENTICATE PLAIN (RFC 4616),
4978 COMPRESS=DEFLATE.
Not implemented: MULTIAPPEND, ESEARCH/SEARCHRES, BINARY, NOTIFY, METADATA,
UTF8=ACCEPT, ACL. SETQUOTA is answered NO (quotas are the administrator's).
"""
from __future__ import annotations

import asyncio
import logging
import re
import socket
import zlib
from bisect import bisect_left
from datetime import timezone

from twisted.internet import interfaces, tcp
from twisted.internet.protocol import Factory
from twisted.mail.imap4 import IMAP4Server

from server.auth import AuthResult, decode_sasl_plain
from storage.changes import FlagsChanged, MessageAdded, MessagesExpunged
from storage.errors import (
    AlreadyExists,
    Forbidden,
    InvalidName,
    MailboxNotEmpty,
    NoSuchMailbox,
    NotFound,
    OverQuota,
    StoreError,
)
from storage.types import SYSTEM_FLAG_NAMES, SpecialUse, names_to_flags

from . import utf7
from .fetch import FetchItem, flags_list, parse_fetch_items, render
from .mailbox import MailboxView
from .parser import (
    Args,
    Atom,
    Command,
    ParseError,
    String,
    format_uid_set,
    parse_date_time,
    parse_number,
    parse_sequence_set,
    quote,
    tokenize,
)
from .search import BadCharset, Candidate, parse_search

log = logging.getLogger("casella.imap")

# ---- reply strings
GREETING = b"Casella IMAP4rev1 ready"
BYE_LOGOUT = b"* BYE Casella logging out"
BYE_TIMEOUT = b"* BYE Autologout; idle for too long"
BYE_TOO_MANY_IP = b"* BYE [UNAVAILABLE] Too many connections from your address"
BYE_LINE_TOO_LONG = b"* BYE Line too long"
BYE_SHUTDOWN = b"* BYE [UNAVAILABLE] Server shutting down"
BYE_MAILBOX_DELETED = b"* BYE Selected mailbox was deleted, have to disconnect"
#: Pipelined input held while a command runs before the socket itself stops being read.
_PIPELINE_BACKLOG = 1 << 20
NO_PRIVACY = b"NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS"
NO_AUTH_FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed"
NO_AUTH_LOCKED = b"NO [UNAVAILABLE] Too many failed logins, try again later"
NO_TOO_MANY_ACCOUNT = b"NO [LIMIT] Too many connections for this account"
NO_READONLY = b"NO [READ-ONLY] Mailbox is read-only"
NO_TOOBIG = b"NO [TOOBIG] Message too big"
BAD_LITERAL_TOO_BIG = b"BAD Literal too big"
BAD_NOT_SELECTED = b"BAD No mailbox selected"
BAD_NOT_AUTHENTICATED = b"BAD Not authenticated"
BAD_ALREADY_AUTHENTICATED = b"BAD Already authenticated"
BAD_UNKNOWN = b"BAD Unknown command"
NO_SERVERBUG = b"NO [SERVERBUG] Internal error, see the server log"

_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+)?\}$")
_TAG = re.compile(rb"^[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$")
_PERMANENT_FLAGS = " ".join(SYSTEM_FLAG_NAMES.values())
_SPECIAL_USE = {role.value.lower(): role for role in SpecialUse}
_STATUS_ITEMS = {b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"HIGHESTMODSEQ", b"SIZE"}
# RFC 3501 §7.4.1: no EXPUNGE while these (non-UID) commands run.
_NO_EXPUNGE = {b"FETCH", b"STORE", b"SEARCH"}


class No(Exception):
    """A tagged NO with this text (may start with a [CODE])."""

    def __init__(self, text: bytes) -> None:
        super().__init__(text)
        self.text = text


def _store_error_reply(exc: StoreError) -> bytes:
    text = str(exc).encode("utf-8", "replace")[:200]
    if isinstance(exc, NoSuchMailbox):
        return b"NO [NONEXISTENT] " + text
    if isinstance(exc, AlreadyExists):
        return b"NO [ALREADYEXISTS] " + text
    if isinstance(exc, OverQuota):
        return b"NO [OVERQUOTA] " + text
    if isinstance(exc, (InvalidName, Forbidden, MailboxNotEmpty)):
        return b"NO [CANNOT] " + text
    if isinstance(exc, NotFound):
        return b"NO [NONEXISTENT] " + text
    return b"NO " + text


class ImapFactory(Factory):
    def __init__(self, app, listener_name: str, implicit_tls: bool, starttls: bool) -> None:  # noqa: ANN001
        self.app = app
        self.listener_name = listener_name
        self.implicit_tls = implicit_tls
        self.starttls = starttls
        self.live_protocols: set[ImapSession] = set()

    def buildProtocol(self, addr):  # noqa: N802, ANN001, ANN201 - Twisted's name
        protocol = ImapSession(self)
        protocol.factory = self
        return protocol


class ImapSession(IMAP4Server):
    """One IMAP connection."""

    def __init__(self, factory: ImapFactory) -> None:
        app = factory.app
        ctx = app.tls.twisted_factory if (factory.starttls and app.tls is not None) else None
        super().__init__(chal={}, contextFactory=ctx)
        self.app = app
        self.store = app.store
        self.settings = app.settings.imap
        self.MAX_LENGTH = self.settings.max_line_length
        self.implicit_tls = factory.implicit_tls
        self.state = "unauth"
        self.account = None
        self.view: MailboxView | None = None
        self._unsubscribe = None
        self._early: list | None = None
        self.peer_host = ""
        self._ip_slot = False
        self._account_slot: tuple[str, str] | None = None
        self._pending: Command | None = None
        self._literal_need = 0
        self._literal_buf = bytearray()
        self._discard = 0
        self._discard_reply: bytes | None = None
        self._discard_tail = False
        self._command_bytes = 0
        self.idle_tag: bytes | None = None
        self._sasl_waiter: asyncio.Future | None = None
        self.busy: bytes | None = None
        self.closed = False
        self.condstore = False
        self.qresync = False
        self._task: asyncio.Task | None = None
        self._claim_task: asyncio.Task | None = None
        self._claim_upto = 0
        self._deflate = None
        self._inflate = None
        self._transport_paused = False

    # ---------------------------------------------------------------- connection

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.live_protocols.add(self)
        peer = self.transport.getPeer()
        self.peer_host = getattr(peer, "host", "") or ""
        self.canStartTLS = interfaces.ITLSTransport(self.transport, None) is not None
        _keepalive(self.transport)
        if not self.app.connections.acquire(("imap", self.peer_host), self.settings.max_connections_per_ip):
            log.info("imap connection from %s refused: too many connections", self.peer_host)
            self.send(BYE_TOO_MANY_IP)
            self.transport.loseConnection()
            self.state = "logout"
            return
        self._ip_slot = True
        self.setTimeout(self.settings.idle_timeout)
        self.send(b"* OK [CAPABILITY " + b" ".join(self.capability_list()) + b"] " + GREETING)

    def connectionLost(self, reason) -> None:  # noqa: N802, ANN001
        self.closed = True
        self.setTimeout(None)
        self.state = "logout"
        self._close_mailbox()
        if self._ip_slot:
            self.app.connections.release(("imap", self.peer_host))
            self._ip_slot = False
        if self._account_slot:
            self.app.connections.release(self._account_slot)
            self._account_slot = None
        if self._sasl_waiter and not self._sasl_waiter.done():
            self._sasl_waiter.cancel()
        self.factory.live_protocols.discard(self)

    def timeoutConnection(self) -> None:  # noqa: N802
        self.send(BYE_TIMEOUT)
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        self.send(BYE_LINE_TOO_LONG)
        self.transport.loseConnection()

    def send(self, line: bytes) -> None:
        self.write(line + b"\r\n")

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._deflate is not None:
            # RFC 4978 §4: each response burst is flushed so the client can decode it at once.
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        transport = self.transport
        # Only a plain TCP transport (not TLSMemoryBIOProtocol, which forwards attributes to the socket below).
        if (type(transport) is tcp.Server and not transport.TLS and transport.connected and not transport.disconnecting
                and not transport.dataBuffer and not transport._tempDataBuffer):
            # Twisted queues every write for the next reactor turn (an epoll registration, a wake-up
            # and a deregistration per response). With nothing queued, send now as asyncio's own
            # transports do; only what the socket does not take waits for Twisted.
            try:
                sent = transport.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # Twisted's own write reports the broken connection
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                log.info("imap: bad DEFLATE stream from %s", self.peer_host)
                self.transport.loseConnection()
                return
        super().dataReceived(data)
        if self.paused and not self._transport_paused and len(self._buffer) > _PIPELINE_BACKLOG:
            self._transport_paused = True
            self.transport.pauseProducing()

    def pauseProducing(self) -> None:  # noqa: N802
        # Commands run one at a time: while one runs, what the client pipelines waits in our line
        # buffer. Pausing the transport too would cost two epoll changes per command; it is done
        # only when a client sends more than _PIPELINE_BACKLOG ahead.
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        if self._transport_paused:
            self._transport_paused = False
            self.transport.resumeProducing()
        self.dataReceived(b"")

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or self.startedTLS or interfaces.ISSLTransport(self.transport, None) is not None

    def plaintext_ok(self) -> bool:
        return self.app.throttle.plaintext_allowed(self.peer_host, self.tls_active)

    def capability_list(self) -> list[bytes]:
        caps = [b"IMAP4rev1", b"LITERAL+", b"SASL-IR", b"ID", b"ENABLE", b"IDLE"]
        if self.state == "unauth":
            if self.ctx is not None and self.canStartTLS and not self.tls_active:
                caps.append(b"STARTTLS")
            caps.append(b"AUTH=PLAIN" if self.plaintext_ok() else b"LOGINDISABLED")
        else:
            caps += [b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"CHILDREN", b"SPECIAL-USE",
                     b"CREATE-SPECIAL-USE", b"LIST-EXTENDED", b"LIST-STATUS", b"CONDSTORE", b"QRESYNC",
                     b"COMPRESS=DEFLATE",
                     b"QUOTA", b"QUOTA=RES-STORAGE", b"APPENDLIMIT=%d" % self.settings.max_append_size]
        return caps

    # ---------------------------------------------------------------- framing

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self.state == "logout":
            return
        self.resetTimeout()
        if self._discard_tail:
            self._discard_line(line)
            return
        if self.idle_tag is not None and self._pending is None:
            self._idle_line(line)
            return
        if self._sasl_waiter is not None and self._pending is None:
            waiter, self._sasl_waiter = self._sasl_waiter, None
            if not waiter.done():
                waiter.set_result(line)
            return
        command = self._pending or Command()
        if self._pending is None:
            self._command_bytes = 0
        command.texts.append(line)
        self._command_bytes += len(line)
        match = _LITERAL_AT_END.search(line)
        if match is None:
            self._pending = None
            self._dispatch(command)
            return
        size, nonsync = int(match.group(1)), bool(match.group(2))
        is_append = _looks_like_append(command.texts[0])
        limit = self.settings.max_append_size if is_append else self.settings.max_line_length
        if size > limit or (not is_append and self._command_bytes + size > self.settings.max_line_length):
            tag = command.texts[0].split(b" ", 1)[0] or b"*"
            # RFC 7889 §4: an APPEND over the limit gets [TOOBIG]; the literal is never read.
            reply = tag + b" " + (NO_TOOBIG if is_append else BAD_LITERAL_TOO_BIG)
            self._pending = None
            if nonsync:
                # RFC 7888 §4: the client sends a non-synchronizing literal anyway; swallow it.
                self._discard, self._discard_reply = size, reply
                self.setRawMode()
            else:
                self.send(reply)
            return
        self._command_bytes += 0 if is_append else size
        self._pending = command
        self._literal_need = size
        self._literal_buf = bytearray()
        if not nonsync:
            self.send(b"+ Ready for literal data")
        if size == 0:
            command.literals.append(b"")
            return
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802
        self.resetTimeout()
        if self._discard:
            take = min(self._discard, len(data))
            self._discard -= take
            if self._discard == 0:
                self._discard_tail = True
                self._line_mode_with(data[take:])
            return
        need = self._literal_need - len(self._literal_buf)
        self._literal_buf += data[:need]
        if len(self._literal_buf) >= self._literal_need:
            assert self._pending is not None
            self._pending.literals.append(bytes(self._literal_buf))
            self._literal_buf = bytearray()
            self._line_mode_with(data[need:])

    def _line_mode_with(self, rest: bytes) -> None:
        # Not setLineMode(rest): that re-enters our dataReceived, which would inflate the
        # already decompressed bytes a second time under COMPRESS=DEFLATE.
        self.line_mode = 1
        if rest:
            IMAP4Server.dataReceived(self, rest)

    def _discard_line(self, line: bytes) -> None:
        match = _LITERAL_AT_END.search(line)
        if match and match.group(2):
            self._discard = int(match.group(1))
            self.setRawMode()
            return
        self._discard_tail = False
        reply, self._discard_reply = self._discard_reply, None
        if reply:
            self.send(reply)

    def _idle_line(self, line: bytes) -> None:
        tag, self.idle_tag = self.idle_tag, None
        if line.strip().upper() == b"DONE":
            self._finish(tag, b"OK IDLE terminated", b"IDLE")
        else:
            self.send(tag + b" BAD Expected DONE")

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, command: Command) -> None:
        first = command.texts[0]
        raw_tag = first.split(b" ", 1)[0]
        try:
            tokens = tokenize(command)
        except ParseError as exc:
            tag = raw_tag if raw_tag and _TAG.match(raw_tag) else b"*"
            self.send(tag + b" BAD " + str(exc).encode())
            return
        if not tokens:
            self.send(b"* BAD Empty command line")
            return
        tag = tokens[0]
        if not isinstance(tag, Atom) or not _TAG.match(tag) or tag.startswith(b"+"):
            self.send(b"* BAD Invalid tag")
            return
        tag = bytes(tag)
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            self.send(tag + b" BAD Missing command")
            return
        name = bytes(tokens[1]).upper()
        args = tokens[2:]
        uid = False
        if name == b"UID":
            if not args or not isinstance(args[0], Atom):
                self.send(tag + b" BAD Missing UID command")
                return
            name = b"UID " + bytes(args[0]).upper()
            args = args[1:]
            uid = True
        entry = _COMMANDS.get(name)
        if entry is None:
            self.send(tag + b" " + BAD_UNKNOWN)
            return
        method, states = entry
        if self.state not in states:
            if self.state == "unauth":
                reply = BAD_NOT_AUTHENTICATED
            elif "unauth" in states and len(states) == 1:
                reply = BAD_ALREADY_AUTHENTICATED
            else:
                reply = BAD_NOT_SELECTED
            self.send(tag + b" " + reply)
            return
        self.pauseProducing()
        self.busy = name
        self._task = asyncio.ensure_future(self._run(tag, name, method, Args(args), uid))

    async def _run(self, tag: bytes, name: bytes, method, args: Args, uid: bool) -> None:  # noqa: ANN001
        try:
            if uid:
                result = await method(self, tag, args, uid=True)
            else:
                result = await method(self, tag, args)
            if self._claim_task is not None and result is not None:
                # Let a \Recent claim in flight finish so EXISTS and RECENT are reported together.
                await asyncio.shield(self._claim_task)
            if result is not None:
                self._finish(tag, b"OK " + result, name)
        except ParseError as exc:
            self.send(tag + b" BAD " + str(exc).encode("utf-8", "replace"))
        except No as exc:
            self._finish(tag, b"NO " + exc.text, name)
        except utf7.BadMailboxEncoding as exc:
            self._finish(tag, b"NO [CANNOT] Bad mailbox name: " + str(exc).encode(), name)
        except BadCharset:
            self._finish(tag, b"NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset", name)
        except StoreError as exc:
            self._finish(tag, _store_error_reply(exc), name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("imap %s failed for %s", name.decode(), self.account.address if self.account else "-")
            self.send(tag + b" " + NO_SERVERBUG)
        finally:
            self.busy = None
            if not self.closed and self.state != "logout":
                self.resumeProducing()

    def _finish(self, tag: bytes, text: bytes, name: bytes) -> None:
        """Send what may be reported now (§7.4.1), then the tagged response."""
        lines = self._updates(allow_expunge=name not in _NO_EXPUNGE)
        lines.append(tag + b" " + text)
        self.write(b"\r\n".join(lines) + b"\r\n")
        self._check_deleted()

    def _updates(self, allow_expunge: bool = True) -> list[bytes]:
        if self.view is None:
            return []
        return self.view.flush(allow_expunge=allow_expunge, condstore=self.condstore, qresync=self.qresync,
                               flags_line=self._flags_line)

    def _check_deleted(self) -> None:
        if self.view is not None and self.view.deleted:
            self.send(BYE_MAILBOX_DELETED)
            self.transport.loseConnection()
            self.state = "logout"

    def _on_change(self, change) -> None:  # noqa: ANN001
        if self.view is None:
            if self._early is not None:
                self._early.append(change)
            return
        self.view.apply(change)
        if isinstance(change, MessageAdded) and not self.view.readonly and change.uid in self.view.pending_added:
            # §2.3.2: the first session told about a new message sees it \Recent; the store decides who.
            self._claim_upto = max(self._claim_upto, change.uid)
            if self._claim_task is None:
                self._claim_task = asyncio.ensure_future(self._claim_recent(self.view))
            return
        if self.idle_tag is not None:
            # RFC 2177: while idling every update is pushed at once.
            lines = self._updates(allow_expunge=True)
            if lines:
                self.write(b"\r\n".join(lines) + b"\r\n")
            self._check_deleted()

    async def _claim_recent(self, view: MailboxView) -> None:
        try:
            while self._claim_upto and self.view is view and not self.closed:
                upto, self._claim_upto = self._claim_upto, 0
                try:
                    first, end = await self.store.claim_recent(self.account.id, view.id, upto, view.info.uidvalidity)
                except Exception:  # noqa: BLE001 - the message is still announced, without \Recent
                    log.exception("imap: \\Recent claim failed for mailbox %s", view.id)
                    break
                if self.view is view:
                    view.add_recent(range(first, end))
        finally:
            self._claim_task = None
            self._claim_upto = 0
        if self.idle_tag is not None and self.view is view and not self.closed:
            lines = self._updates(allow_expunge=True)
            if lines:
                self.write(b"\r\n".join(lines) + b"\r\n")
            self._check_deleted()

    def _announce_keywords(self) -> None:
        """RFC 3501 §7.2.6: a keyword appears in * FLAGS before any FETCH shows it."""
        if self.view is not None and self.view.new_keywords:
            self.view.new_keywords = False
            self.send(self._flags_line())

    def _flags_line(self) -> bytes:
        keywords = sorted(self.view.keywords) if self.view else []
        return b"* FLAGS (" + " ".join([_PERMANENT_FLAGS, *keywords]).encode("utf-8") + b")"

    def _close_mailbox(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.view = None
        self._early = None
        if self.state == "selected":
            self.state = "auth"

    def close_for_shutdown(self) -> None:
        self.send(BYE_SHUTDOWN)
        self.transport.loseConnection()

    # ---------------------------------------------------------------- any state

    async def cmd_capability(self, tag: bytes, args: Args) -> bytes:
        args.end()
        self.send(b"* CAPABILITY " + b" ".join(self.capability_list()))
        return b"CAPABILITY completed"

    async def cmd_noop(self, tag: bytes, args: Args) -> bytes:
        args.end()
        await self._resync()
        return b"NOOP completed"

    async def _resync(self) -> None:
        """Catch up with writers the change bus does not reach (another process on SQLite).

        One cheap read when nothing changed; otherwise the store's modseq log
        (RFC 7162 §3) becomes the same events the bus would have delivered.
        """
        view = self.view
        if view is None:
            return
        info = await self.store.get_mailbox(self.account.id, view.info.name)
        if self.view is not view:
            return
        if info is None or info.id != view.id:
            view.deleted = True
            return
        if info.highest_modseq <= view.highest_modseq:
            return
        changes = await self.store.changes_since(self.account.id, view.id, view.highest_modseq)
        if self.view is not view:
            return
        if changes.vanished:
            view.apply(MessagesExpunged(view.id, tuple(changes.vanished), info.highest_modseq))
        for meta in changes.changed:
            if meta.uid in view.entries:
                view.apply(FlagsChanged(view.id, meta.uid, meta.modseq, meta.flags, meta.keywords))
            else:
                view.apply(MessageAdded(view.id, meta.uid, meta.modseq, meta.flags, meta.keywords))
                if meta.uid in view.pending_added:
                    view.meta[meta.uid] = meta
                    if not view.readonly:
                        self._claim_upto = max(self._claim_upto, meta.uid)
        if self._claim_upto and self._claim_task is None and not view.readonly:
            # Claim inline: the caller's flush then reports the right RECENT count.
            upto, self._claim_upto = self._claim_upto, 0
            first, end = await self.store.claim_recent(self.account.id, view.id, upto, view.info.uidvalidity)
            if self.view is view:
                view.add_recent(range(first, end))
        view.highest_modseq = max(view.highest_modseq, info.highest_modseq)

    async def cmd_logout(self, tag: bytes, args: Args) -> None:
        args.end()
        self.send(BYE_LOGOUT)
        self.send(tag + b" OK LOGOUT completed")
        self.state = "logout"
        self._close_mailbox()
        self.state = "logout"
        self.transport.loseConnection()

    async def cmd_id(self, tag: bytes, args: Args) -> bytes:
        # RFC 2971: the client's list (or NIL) is only logged.
        token = args.next("ID parameter list")
        if not (isinstance(token, list) or (isinstance(token, Atom) and token.upper() == b"NIL")):
            raise ParseError("ID expects a list or NIL")
        if isinstance(token, list) and len(token) % 2:
            raise ParseError("ID list must hold field/value pairs")
        args.end()
        self.send(b'* ID ("name" "Casella" "vendor" "Casella")')
        return b"ID completed"

    # ---------------------------------------------------------------- not authenticated

    async def cmd_starttls(self, tag: bytes, args: Args) -> bytes | None:
        args.end()
        if self.tls_active:
            raise No(b"TLS is already active")
        if self.ctx is None or not self.canStartTLS:
            raise No(b"TLS not available")
        self.send(tag + b" OK Begin TLS negotiation now")
        # Anything the client pipelined after STARTTLS is dropped (command injection defence).
        self.clearLineBuffer()
        self.transport.startTLS(self.ctx)
        self.startedTLS = True
        return None

    async def cmd_login(self, tag: bytes, args: Args) -> bytes:
        user = args.astring("user name")
        password = args.astring("password")
        args.end()
        if not self.plaintext_ok():
            # RFC 3501 §6.2.3: LOGINDISABLED is advertised, so LOGIN is refused.
            raise No(NO_PRIVACY[3:])
        return await self._authenticate(user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))

    async def cmd_authenticate(self, tag: bytes, args: Args) -> bytes:
        mechanism = args.atom("mechanism").upper()
        initial = args.astring("initial response") if args.more() else None
        args.end()
        if mechanism != b"PLAIN":
            raise No(b"Unsupported authentication mechanism")
        if not self.plaintext_ok():
            raise No(NO_PRIVACY[3:])
        if initial is None:
            self.send(b"+ ")
            waiter = asyncio.get_running_loop().create_future()
            self._sasl_waiter = waiter
            self.resumeProducing()
            try:
                initial = await waiter
            finally:
                self._sasl_waiter = None
                if not self.closed:
                    self.pauseProducing()
        if initial.strip() == b"*":
            raise ParseError("AUTHENTICATE cancelled")
        if initial == b"=":
            initial = b""
        decoded = decode_sasl_plain(initial)
        if decoded is None:
            raise ParseError("malformed PLAIN response")
        authzid, authcid, password = decoded
        if authzid and authzid != authcid:
            raise No(b"[AUTHORIZATIONFAILED] Authorization identity not allowed")
        return await self._authenticate(authcid, password)

    async def _authenticate(self, user: str, password: str) -> bytes:
        result, account = await self.app.authenticator.check(user, password, self.peer_host, "imap")
        if result == AuthResult.LOCKED:
            raise No(NO_AUTH_LOCKED[3:])
        if account is None:
            raise No(NO_AUTH_FAILED[3:])
        key = ("imap-account", str(account.id))
        if not self.app.connections.acquire(key, self.settings.max_connections_per_account):
            raise No(NO_TOO_MANY_ACCOUNT[3:])
        self._account_slot = key
        self.account = account
        self.state = "auth"
        return b"[CAPABILITY " + b" ".join(self.capability_list()) + b"] Logged in"

    # ---------------------------------------------------------------- authenticated

    def _mailbox_name(self, raw: bytes) -> str:
        name = utf7.decode(raw)
        if name.upper() == "INBOX":
            return "INBOX"
        return name

    async def cmd_select(self, tag: bytes, args: Args, *, readonly: bool = False) -> bytes:
        raw_name = args.astring("mailbox name")
        qresync_params = None
        if args.more():
            params = args.list("select parameters")
            index = 0
            while index < len(params):
                param = params[index]
                if not isinstance(param, Atom):
                    raise ParseError("bad select parameter")
                word = bytes(param).upper()
                if word == b"CONDSTORE":
                    self.condstore = True
                elif word == b"QRESYNC":
                    if not self.qresync:
                        raise ParseError("QRESYNC must be enabled first")
                    index += 1
                    if index >= len(params) or not isinstance(params[index], list):
                        raise ParseError("QRESYNC needs parameters")
                    qresync_params = _parse_qresync(params[index])
                else:
                    raise ParseError("unknown select parameter")
                index += 1
        args.end()
        name = self._mailbox_name(raw_name)
        if self.view is not None:
            self._close_mailbox()
            self.send(b"* OK [CLOSED] Previous mailbox closed")
        self.state = "auth"
        self._early = []

        def listen(mailbox_id: int) -> None:
            # Before the index is read: a change committed in between reaches the session twice
            # at worst (the view ignores what it has), never not at all.
            self._unsubscribe = self.store.bus.subscribe(mailbox_id, self._on_change)

        try:
            snapshot = await self.store.select_index(self.account.id, name, readonly=readonly, located=listen)
        except BaseException:
            self._close_mailbox()
            raise
        view = MailboxView(snapshot, readonly)
        if readonly:
            # EXAMINE shows \Recent without claiming it (§6.3.2): the newest `recent` UIDs.
            status = await self.store.mailbox_status(self.account.id, name)
            if status.recent:
                view.recent = set(view.uids[-status.recent:])
                view.recent_reported = len(view.recent)
        early, self._early = self._early or [], None
        for change in early:
            view.apply(change)
        self.view = view
        self.state = "selected"
        lines = [self._flags_line()]
        if readonly:
            lines.append(b"* OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            lines.append(b"* OK [PERMANENTFLAGS (" + _PERMANENT_FLAGS.encode() + b" \\*)] Flags permitted")
        lines.append(b"* %d EXISTS" % view.exists)
        lines.append(b"* %d RECENT" % len(view.recent))
        unseen = view.first_unseen()
        if unseen is not None:
            lines.append(b"* OK [UNSEEN %d] First unseen" % unseen)
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid" % view.info.uidvalidity)
        lines.append(b"* OK [UIDNEXT %d] Predicted next UID" % view.uidnext)
        lines.append(b"* OK [HIGHESTMODSEQ %d] Highest" % view.highest_modseq)
        self.write(b"\r\n".join(lines) + b"\r\n")
        if qresync_params is not None:
            await self._qresync_select(*qresync_params)
        verb = b"EXAMINE" if readonly else b"SELECT"
        return (b"[READ-ONLY] " if readonly else b"[READ-WRITE] ") + verb + b" completed"

    async def cmd_examine(self, tag: bytes, args: Args) -> bytes:
        return await self.cmd_select(tag, args, readonly=True)

    async def _qresync_select(self, uidvalidity: int, modseq: int, known: list | None) -> None:
        view = self.view
        if uidvalidity != view.info.uidvalidity:
            return
        changes = await self.store.changes_since(self.account.id, view.id, modseq)
        vanished = changes.vanished
        if known is not None:
            vanished = [u for u in vanished if _in_uid_ranges(u, known)]
        if vanished:
            self.send(b"* VANISHED (EARLIER) " + format_uid_set(vanished))
        lines = []
        for meta in changes.changed:
            seq = view.seq_of(meta.uid)
            if seq is None:
                continue
            lines.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))" % (
                seq, meta.uid, flags_list(view.flag_names(meta.uid)), view.entries[meta.uid].modseq))
        if lines:
            self.write(b"\r\n".join(lines) + b"\r\n")

    async def cmd_create(self, tag: bytes, args: Args) -> bytes:
        raw_name = args.astring("mailbox name")
        special_use = None
        if args.more():
            # RFC 6154 §3: CREATE name (USE (\Role))
            params = args.list("create parameters")
            if len(params) != 2 or not isinstance(params[0], Atom) or params[0].upper() != b"USE" \
                    or not isinstance(params[1], list):
                raise ParseError("bad CREATE parameters")
            roles = [bytes(item).decode("latin-1").lower() for item in params[1]]
            if len(roles) > 1:
                raise No(b"[USEATTR] Only one special-use attribute per mailbox")
            if roles:
                if roles[0] not in _SPECIAL_USE:
                    raise No(b"[USEATTR] Unsupported special-use attribute")
                special_use = _SPECIAL_USE[roles[0]]
        args.end()
        name = self._mailbox_name(raw_name)
        if name == "INBOX":
            raise AlreadyExists("INBOX always exists")
        # RFC 3501 §6.3.3 CREATE does not subscribe (clients SUBSCRIBE themselves); a subscription
        # the name kept from an earlier, deleted mailbox stays (§6.3.6).
        await self.store.create_mailbox(self.account.id, name, special_use=special_use, subscribe=False)
        return b"CREATE completed"

    async def cmd_delete(self, tag: bytes, args: Args) -> bytes:
        name = self._mailbox_name(args.astring("mailbox name"))
        args.end()
        await self.store.delete_mailbox(self.account.id, name)
        return b"DELETE completed"

    async def cmd_rename(self, tag: bytes, args: Args) -> bytes:
        old = self._mailbox_name(args.astring("mailbox name"))
        new = self._mailbox_name(args.astring("new mailbox name"))
        args.end()
        await self.store.rename_mailbox(self.account.id, old, new)
        return b"RENAME completed"

    async def cmd_subscribe(self, tag: bytes, args: Args, *, subscribed: bool = True) -> bytes:
        name = self._mailbox_name(args.astring("mailbox name"))
        args.end()
        await self.store.set_subscribed(self.account.id, name, subscribed)
        return (b"SUBSCRIBE" if subscribed else b"UNSUBSCRIBE") + b" completed"

    async def cmd_unsubscribe(self, tag: bytes, args: Args) -> bytes:
        return await self.cmd_subscribe(tag, args, subscribed=False)

    async def cmd_namespace(self, tag: bytes, args: Args) -> bytes:
        args.end()
        self.send(b'* NAMESPACE (("" "/")) NIL NIL')
        return b"NAMESPACE completed"

    async def cmd_enable(self, tag: bytes, args: Args) -> bytes:
        if not args.more():
            raise ParseError("ENABLE needs capability names")
        enabled = []
        while args.more():
            cap = args.atom("capability").upper()
            if cap == b"CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append(cap)
            elif cap == b"QRESYNC" and not self.qresync:
                self.qresync = True
                self.condstore = True
                enabled.append(cap)
        self.send(b"* ENABLED" + b"".join(b" " + cap for cap in enabled))
        return b"ENABLE completed"

    async def cmd_list(self, tag: bytes, args: Args, *, lsub: bool = False) -> bytes:
        from .listing import run_list

        await run_list(self, args, lsub=lsub)
        return (b"LSUB" if lsub else b"LIST") + b" completed"

    async def cmd_lsub(self, tag: bytes, args: Args) -> bytes:
        return await self.cmd_list(tag, args, lsub=True)

    async def cmd_status(self, tag: bytes, args: Args) -> bytes:
        raw_name = args.astring("mailbox name")
        items = args.list("status items")
        args.end()
        if not items:
            raise ParseError("empty status item list")
        wanted = []
        for item in items:
            if not isinstance(item, Atom) or bytes(item).upper() not in _STATUS_ITEMS:
                raise ParseError("unknown status item")
            wanted.append(bytes(item).upper())
        name = self._mailbox_name(raw_name)
        status = await self.store.mailbox_status(self.account.id, name)
        self.send(b"* STATUS " + quote(utf7.encode(status.mailbox.name)) + b" " + status_items(status, wanted))
        return b"STATUS completed"

    async def cmd_append(self, tag: bytes, args: Args) -> bytes:
        raw_name = args.astring("mailbox name")
        flags: list[str] = []
        if isinstance(args.peek(), list):
            flags = [_flag_name(item) for item in args.list("flag list")]
        date = None
        if isinstance(args.peek(), String) and len(args.tokens) - args.i >= 2:
            # The store keeps UTC (SQLite drops offsets): the instant survives, the zone does not.
            date = parse_date_time(args.string("date-time")).astimezone(timezone.utc)
        message = args.next("message literal")
        if not isinstance(message, String):
            raise ParseError("message literal expected")
        args.end()
        if len(message) > self.settings.max_append_size:
            raise No(NO_TOOBIG[3:])
        if not message:
            raise No(b"Cannot append an empty message")
        try:
            bits, keywords = names_to_flags(flags)
        except ValueError as exc:
            raise ParseError(str(exc)) from None
        name = self._mailbox_name(raw_name)
        try:
            result = await self.store.append(self.account.id, name, bytes(message), flags=bits,
                                             keywords=keywords, internaldate=date)
        except NoSuchMailbox:
            raise No(b"[TRYCREATE] No such mailbox") from None
        return b"[APPENDUID %d %d] APPEND completed" % (result.uidvalidity, result.uid)

    async def cmd_getquotaroot(self, tag: bytes, args: Args) -> bytes:
        raw_name = args.astring("mailbox name")
        args.end()
        name = self._mailbox_name(raw_name)
        if await self.store.get_mailbox(self.account.id, name) is None:
            raise NoSuchMailbox(f"no mailbox {name}")
        used, limit, _count = await self.store.get_quota(self.account.id)
        encoded = quote(utf7.encode(name))
        if limit is None:
            self.send(b"* QUOTAROOT " + encoded)
        else:
            self.send(b'* QUOTAROOT ' + encoded + b' ""')
            self.send(b'* QUOTA "" (STORAGE %d %d)' % (_kib(used), limit // 1024))
        return b"GETQUOTAROOT completed"

    async def cmd_getquota(self, tag: bytes, args: Args) -> bytes:
        root = args.astring("quota root")
        args.end()
        used, limit, _count = await self.store.get_quota(self.account.id)
        if root != b"" or limit is None:
            raise No(b"[NONEXISTENT] No such quota root")
        self.send(b'* QUOTA "" (STORAGE %d %d)' % (_kib(used), limit // 1024))
        return b"GETQUOTA completed"

    async def cmd_setquota(self, tag: bytes, args: Args) -> bytes:
        raise No(b"[NOPERM] Quotas are set by the administrator")

    async def cmd_compress(self, tag: bytes, args: Args) -> None:
        mechanism = args.atom("mechanism").upper()
        args.end()
        if mechanism != b"DEFLATE":
            raise ParseError("unknown compression mechanism")
        if self._deflate is not None:
            raise No(b"[COMPRESSIONACTIVE] DEFLATE is already active")
        self.send(tag + b" OK DEFLATE active")
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        # Whatever the client sent after COMPRESS is already compressed (we are paused: it waits here).
        pending = self.clearLineBuffer()
        if pending:
            super().dataReceived(self._inflate.decompress(pending))
        return None

    async def cmd_idle(self, tag: bytes, args: Args) -> None:
        args.end()
        await self._resync()
        lines = self._updates(allow_expunge=True)
        lines.append(b"+ idling")
        self.write(b"\r\n".join(lines) + b"\r\n")
        self.idle_tag = tag
        self._check_deleted()
        return None

    # ---------------------------------------------------------------- selected

    async def cmd_check(self, tag: bytes, args: Args) -> bytes:
        args.end()
        await self._resync()
        return b"CHECK completed"

    async def cmd_close(self, tag: bytes, args: Args) -> bytes:
        args.end()
        view = self.view
        if not view.readonly:
            # §6.4.2: CLOSE expunges silently.
            await self.store.expunge(self.account.id, view.id, mailbox_entries=len(view.uids))
        self._close_mailbox()
        return b"CLOSE completed"

    async def cmd_unselect(self, tag: bytes, args: Args) -> bytes:
        args.end()
        self._close_mailbox()
        return b"UNSELECT completed"

    async def cmd_expunge(self, tag: bytes, args: Args, *, uid: bool = False) -> bytes:
        uids = None
        if uid:
            uids = self.view.resolve(parse_sequence_set(args.atom("UID set")), uid=True)
        args.end()
        view = self.view
        if view.readonly:
            raise No(NO_READONLY[3:])
        if uid and not uids:
            return b"EXPUNGE completed"
        removed = await self.store.expunge(self.account.id, view.id, uids, mailbox_entries=len(view.uids))
        if removed and self.view is view:
            view.apply(MessagesExpunged(view.id, tuple(removed), 0))
        return b"EXPUNGE completed"

    async def cmd_search(self, tag: bytes, args: Args, *, uid: bool = False) -> bytes:
        # Without CHARSET, 8-bit search strings are taken as UTF-8 (as Dovecot does) rather than refused.
        charset = "UTF-8"
        token = args.peek()
        if isinstance(token, Atom) and bytes(token).upper() == b"CHARSET":
            args.next()
            charset = args.astring("charset").decode("ascii", "replace")
        view = self.view
        tokens = args.tokens[args.i:]
        query = parse_search(tokens, charset, view.exists, view.uids[-1] if view.uids else 0)
        if query.uses_modseq:
            self.condstore = True
        candidates = []
        view_uids = list(view.uids)
        metas, recent = view.meta, view.recent
        for seq, (message_uid, flags, keywords, modseq) in enumerate(
                zip(view_uids, *view.entries.columns(view_uids)), start=1):
            meta = metas.get(message_uid)
            candidates.append(Candidate(seq, message_uid, flags, keywords,
                                        meta.size if meta else -1, meta.internaldate if meta else None,
                                        modseq, message_uid in recent))
        if query.needs_meta:
            # Sizes and dates are not part of the SELECT index: read them once, then cached in the view.
            await self._complete_candidates(candidates, query.needs_raw)
        if query.needs_raw:
            matched = []
            for start in range(0, len(candidates), 200):
                chunk = candidates[start:start + 200]
                await self._load_raw(chunk)
                matched.extend(await asyncio.to_thread(
                    lambda c=chunk: [m for m in c if m.raw is not None and query.predicate(m)]))
                for item in chunk:
                    item.raw = None
                    item._message = None
        else:
            matched = [m for m in candidates if query.predicate(m)]
        numbers = [m.uid if uid else m.seq for m in matched]
        line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
        if query.uses_modseq and matched:
            line += b" (MODSEQ %d)" % max(m.modseq for m in matched)
        self.send(line)
        return b"SEARCH completed"

    async def _complete_candidates(self, candidates: list[Candidate], needs_raw: bool) -> None:
        missing = [c.uid for c in candidates if c.internaldate is None]
        if not missing:
            return
        fetched = await self.store.fetch(self.account.id, self.view.id, missing)
        by_uid = {f.meta.uid: f.meta for f in fetched}
        for candidate in candidates:
            meta = by_uid.get(candidate.uid)
            if meta is not None:
                self.view.meta[candidate.uid] = meta
                candidate.size, candidate.internaldate = meta.size, meta.internaldate
        candidates[:] = [c for c in candidates if c.internaldate is not None]

    async def _load_raw(self, chunk: list[Candidate]) -> None:
        fetched = await self.store.fetch(self.account.id, self.view.id, [c.uid for c in chunk], raw=True)
        by_uid = {f.meta.uid: f.raw for f in fetched}
        for candidate in chunk:
            candidate.raw = by_uid.get(candidate.uid)

    async def cmd_fetch(self, tag: bytes, args: Args, *, uid: bool = False) -> bytes:
        ranges = parse_sequence_set(args.atom("sequence set"))
        items = parse_fetch_items(args.next("fetch items"))
        changed_since = None
        vanished = False
        if args.more():
            modifiers = args.list("fetch modifiers")
            index = 0
            while index < len(modifiers):
                word = bytes(modifiers[index]).upper() if isinstance(modifiers[index], Atom) else b""
                if word == b"CHANGEDSINCE" and index + 1 < len(modifiers):
                    changed_since = parse_number(bytes(modifiers[index + 1]), "mod-sequence")
                    index += 2
                elif word == b"VANISHED" and uid and self.qresync:
                    vanished = True
                    index += 1
                else:
                    raise ParseError("bad FETCH modifier")
            if vanished and changed_since is None:
                raise ParseError("VANISHED needs CHANGEDSINCE")
        args.end()
        view = self.view
        uids = view.resolve(ranges, uid=uid)
        names = {item.name for item in items}
        if uid and b"UID" not in names:
            items.insert(0, FetchItem(b"UID"))
        if changed_since is not None or b"MODSEQ" in names:
            self.condstore = True
            if b"MODSEQ" not in names:
                items.append(FetchItem(b"MODSEQ"))
        if vanished:
            changes = await self.store.changes_since(self.account.id, view.id, changed_since)
            gone = [u for u in changes.vanished if _in_uid_ranges(u, ranges)]
            if gone:
                self.send(b"* VANISHED (EARLIER) " + format_uid_set(gone))
        if changed_since is not None:
            uids = [u for u in uids if view.entries[u].modseq > changed_since]
        if not uids:
            return b"FETCH completed"
        # §6.4.5: fetching a body section (not PEEK) sets \Seen in a read-write mailbox.
        if not view.readonly and any(item.sets_seen for item in items):
            unseen = [u for u in uids if not view.entries[u].flags & 1]
            if unseen:
                result = await self.store.store_flags(self.account.id, view.id, unseen, "add", 1)
                for update in result.updated:
                    view.update_own(update.uid, update.flags, update.keywords, update.modseq)
                if b"FLAGS" not in names:
                    items.append(FetchItem(b"FLAGS"))
        self._announce_keywords()
        needs_raw = any(item.needs_raw for item in items)
        needs_cache = any(item.needs_cache for item in items)
        needs_meta = bool(names & {b"INTERNALDATE", b"RFC822.SIZE"})
        if not (needs_raw or needs_cache or needs_meta):
            await self._fetch_from_view(uids, items)
        else:
            chunk = 50 if needs_raw else 1000
            for start in range(0, len(uids), chunk):
                batch = uids[start:start + chunk]
                fetched = await self.store.fetch_parts(self.account.id, view.id, view.info.uidvalidity, batch,
                                                       cache=needs_cache, raw=needs_raw)
                if self.view is not view:
                    break
                # §7.2.6: another session's new keyword may have reached the view during the await.
                self._announce_keywords()
                out = []
                for message in fetched:
                    message_uid = message.meta.uid
                    seq = view.seq_of(message_uid)
                    if seq is None:
                        continue
                    view.meta.setdefault(message_uid, message.meta)
                    entry = view.entries[message_uid]
                    parts = render(items, uid=message_uid, flag_names=view.flag_names(message_uid),
                                   internaldate=message.meta.internaldate, size=message.meta.size,
                                   modseq=entry.modseq, cache=message.cache, raw=message.raw,
                                   header_size=message.header_size)
                    out.append(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
                self.write(b"".join(out))
        return b"FETCH completed"

    async def _fetch_from_view(self, uids: list[int], items: list[FetchItem]) -> None:
        """FETCH of UID/FLAGS/MODSEQ only: answered from the view, no store access (the hot path
        of every client's resync, `FETCH 1:* (UID FLAGS)`)."""
        view = self.view
        view_uids, entries, recent = view.uids, view.entries, view.recent
        names = [item.name for item in items]
        flag_cache: dict = {}
        out = []
        index = bisect_left(view_uids, uids[0]) if uids else 0
        for message_uid, flags, keywords, modseq in zip(uids, *entries.columns(uids)):
            while view_uids[index] != message_uid:
                index += 1
            parts = []
            for name in names:
                if name == b"UID":
                    parts.append(b"UID %d" % message_uid)
                elif name == b"FLAGS":
                    key = (flags, keywords, message_uid in recent)
                    rendered = flag_cache.get(key)
                    if rendered is None:
                        rendered = flag_cache[key] = b"FLAGS " + flags_list(view.flag_names(message_uid))
                    parts.append(rendered)
                elif name == b"MODSEQ":
                    parts.append(b"MODSEQ (%d)" % modseq)
            out.append(b"* %d FETCH (%s)\r\n" % (index + 1, b" ".join(parts)))
            if len(out) >= 5000:
                self.write(b"".join(out))
                out = []
        if out:
            self.write(b"".join(out))

    async def cmd_store(self, tag: bytes, args: Args, *, uid: bool = False) -> bytes:
        ranges = parse_sequence_set(args.atom("sequence set"))
        unchanged_since = None
        if isinstance(args.peek(), list):
            modifiers = args.list("store modifiers")
            if len(modifiers) != 2 or not isinstance(modifiers[0], Atom) \
                    or bytes(modifiers[0]).upper() != b"UNCHANGEDSINCE":
                raise ParseError("bad STORE modifier")
            unchanged_since = parse_number(bytes(modifiers[1]), "mod-sequence")
            self.condstore = True
        action = args.atom("store action").upper()
        match = re.match(rb"^([+-]?)FLAGS(\.SILENT)?$", action)
        if not match:
            raise ParseError("bad STORE action")
        token = args.next("flags")
        raw_flags = token if isinstance(token, list) else [token] + list(args.tokens[args.i:])
        if not isinstance(token, list):
            args.i = len(args.tokens)
        args.end()
        names = [_flag_name(item) for item in raw_flags]
        try:
            bits, keywords = names_to_flags(names)
        except ValueError as exc:
            raise ParseError(str(exc)) from None
        view = self.view
        if view.readonly:
            raise No(NO_READONLY[3:])
        uids = view.resolve(ranges, uid=uid)
        mode = {b"+": "add", b"-": "remove", b"": "replace"}[match.group(1)]
        silent = bool(match.group(2))
        failed: tuple[int, ...] = ()
        if uids:
            result = await self.store.store_flags(self.account.id, view.id, uids, mode, bits, keywords,
                                                  unchanged_since=unchanged_since)
            failed = result.failed_uids
            for update in result.updated:
                view.update_own(update.uid, update.flags, update.keywords, update.modseq)
            updated = {update.uid for update in result.updated}
            self._announce_keywords()
            out = []
            for message_uid in uids:
                seq = view.seq_of(message_uid)
                if seq is None or message_uid in failed or message_uid in view.pending_expunged:
                    continue
                # RFC 7162 §3.1.3: with UNCHANGEDSINCE, updated messages are reported even if .SILENT.
                if silent and not (unchanged_since is not None and message_uid in updated):
                    continue
                parts = [b"FLAGS " + flags_list(view.flag_names(message_uid))]
                if uid:
                    parts.insert(0, b"UID %d" % message_uid)
                if self.condstore:
                    parts.append(b"MODSEQ (%d)" % view.entries[message_uid].modseq)
                out.append(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
            self.write(b"".join(out))
        if failed:
            numbers = failed if uid else [view.seq_of(u) for u in failed if view.seq_of(u)]
            return b"[MODIFIED " + format_uid_set(numbers) + b"] Conditional STORE failed"
        return b"STORE completed"

    async def cmd_copy(self, tag: bytes, args: Args, *, uid: bool = False, move: bool = False) -> bytes:
        ranges = parse_sequence_set(args.atom("sequence set"))
        name = self._mailbox_name(args.astring("mailbox name"))
        args.end()
        view = self.view
        if move and view.readonly:
            raise No(NO_READONLY[3:])
        uids = view.resolve(ranges, uid=uid)
        verb = b"MOVE" if move else b"COPY"
        try:
            result = await self.store.copy(self.account.id, view.id, uids, name, move=move)
        except NoSuchMailbox:
            raise No(b"[TRYCREATE] No such mailbox") from None
        if not result.source_uids:
            if await self.store.get_mailbox(self.account.id, name) is None:
                raise No(b"[TRYCREATE] No such mailbox")
            return verb + b" completed"
        code = b"[COPYUID %d %s %s]" % (result.uidvalidity, format_uid_set(result.source_uids),
                                        format_uid_set(result.target_uids))
        if move:
            # RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
            self.send(b"* OK " + code + b" Moved")
            if self.view is view:
                view.apply(MessagesExpunged(view.id, tuple(result.source_uids), 0))
            return b"MOVE completed"
        return code + b" COPY completed"

    async def cmd_move(self, tag: bytes, args: Args, *, uid: bool = False) -> bytes:
        return await self.cmd_copy(tag, args, uid=uid, move=True)


def _parse_qresync(params: list) -> tuple[int, int, list | None]:
    if len(params) < 2:
        raise ParseError("QRESYNC needs uidvalidity and modseq")
    uidvalidity = parse_number(bytes(params[0]), "uidvalidity", nonzero=True)
    modseq = parse_number(bytes(params[1]), "mod-sequence")
    known = None
    if len(params) >= 3 and isinstance(params[2], Atom):
        known = parse_sequence_set(bytes(params[2]))
    return uidvalidity, modseq, known


def _in_uid_ranges(uid: int, ranges: list[tuple[int, int]]) -> bool:
    for lo, hi in ranges:
        lo = uid if lo < 0 else lo
        hi = uid if hi < 0 else hi
        if min(lo, hi) <= uid <= max(lo, hi):
            return True
    return False


def _flag_name(token) -> str:  # noqa: ANN001
    if not isinstance(token, Atom):
        raise ParseError("bad flag")
    name = bytes(token)
    if name.startswith(b"\\"):
        if not name[1:].isalpha():
            raise ParseError("bad flag")
    elif any(c in name for c in b"[]\\"):
        raise ParseError("bad flag")
    return name.decode("utf-8", "replace")


def _kib(value: int) -> int:
    return (value + 1023) // 1024


def _keepalive(transport) -> None:  # noqa: ANN001
    """TCP keep-alive probes after 5 idle minutes: a phone that vanished during a 29-minute
    IDLE is found in about 6 minutes, without any IMAP chatter that would wake it."""
    for candidate in (transport, getattr(transport, "transport", None)):
        handle = getattr(candidate, "getHandle", None)
        sock = handle() if handle is not None else None
        if isinstance(sock, socket.socket):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 300)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 30)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
            except OSError:
                pass
            return


def _looks_like_append(first_line: bytes) -> bool:
    parts = first_line.split(b" ", 2)
    return len(parts) >= 2 and parts[1].upper() == b"APPEND"


def status_items(status, wanted: list[bytes]) -> bytes:  # noqa: ANN001
    values = {
        b"MESSAGES": status.messages, b"RECENT": status.recent, b"UIDNEXT": status.mailbox.uidnext,
        b"UIDVALIDITY": status.mailbox.uidvalidity, b"UNSEEN": status.unseen,
        b"HIGHESTMODSEQ": status.mailbox.highest_modseq, b"SIZE": status.size,
    }
    return b"(" + b" ".join(b"%s %d" % (item, values[item]) for item in wanted) + b")"


_ANY = ("unauth", "auth", "selected")
_AUTH = ("auth", "selected")
_SELECTED = ("selected",)
_COMMANDS = {
    b"CAPABILITY": (ImapSession.cmd_capability, _ANY),
    b"NOOP": (ImapSession.cmd_noop, _ANY),
    b"LOGOUT": (ImapSession.cmd_logout, _ANY),
    b"ID": (ImapSession.cmd_id, _ANY),
    b"STARTTLS": (ImapSession.cmd_starttls, ("unauth",)),
    b"LOGIN": (ImapSession.cmd_login, ("unauth",)),
    b"AUTHENTICATE": (ImapSession.cmd_authenticate, ("unauth",)),
    b"SELECT": (ImapSession.cmd_select, _AUTH),
    b"EXAMINE": (ImapSession.cmd_examine, _AUTH),
    b"CREATE": (ImapSession.cmd_create, _AUTH),
    b"DELETE": (ImapSession.cmd_delete, _AUTH),
    b"RENAME": (ImapSession.cmd_rename, _AUTH),
    b"SUBSCRIBE": (ImapSession.cmd_subscribe, _AUTH),
    b"UNSUBSCRIBE": (ImapSession.cmd_unsubscribe, _AUTH),
    b"LIST": (ImapSession.cmd_list, _AUTH),
    b"LSUB": (ImapSession.cmd_lsub, _AUTH),
    b"STATUS": (ImapSession.cmd_status, _AUTH),
    b"APPEND": (ImapSession.cmd_append, _AUTH),
    b"NAMESPACE": (ImapSession.cmd_namespace, _AUTH),
    b"ENABLE": (ImapSession.cmd_enable, _AUTH),
    b"IDLE": (ImapSession.cmd_idle, _AUTH),
    b"COMPRESS": (ImapSession.cmd_compress, _AUTH),
    b"GETQUOTAROOT": (ImapSession.cmd_getquotaroot, _AUTH),
    b"GETQUOTA": (ImapSession.cmd_getquota, _AUTH),
    b"SETQUOTA": (ImapSession.cmd_setquota, _AUTH),
    b"CHECK": (ImapSession.cmd_check, _SELECTED),
    b"CLOSE": (ImapSession.cmd_close, _SELECTED),
    b"UNSELECT": (ImapSession.cmd_unselect, _SELECTED),
    b"EXPUNGE": (ImapSession.cmd_expunge, _SELECTED),
    b"SEARCH": (ImapSession.cmd_search, _SELECTED),
    b"FETCH": (ImapSession.cmd_fetch, _SELECTED),
    b"STORE": (ImapSession.cmd_store, _SELECTED),
    b"COPY": (ImapSession.cmd_copy, _SELECTED),
    b"MOVE": (ImapSession.cmd_move, _SELECTED),
    b"UID FETCH": (ImapSession.cmd_fetch, _SELECTED),
    b"UID STORE": (ImapSession.cmd_store, _SELECTED),
    b"UID SEARCH": (ImapSession.cmd_search, _SELECTED),
    b"UID COPY": (ImapSession.cmd_copy, _SELECTED),
    b"UID MOVE": (ImapSession.cmd_move, _SELECTED),
    b"UID EXPUNGE": (ImapSession.cmd_expunge, _SELECTED),
}
