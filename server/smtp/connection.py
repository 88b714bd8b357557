"""One SMTP connection: aiosmtpd's `SMTP` protocol with Casella's limits, EHLO and logging.

aiosmtpd parses commands and drives the handler (`handler.py`); this subclass
adds what it lacks: per-address connection limits, an idle timeout that counts
any bytes received (not only commands, so a slow 50 MB upload is not cut),
a budget of commands before MAIL, enhanced status codes on every reply
(RFC 2034), replies to a pipelined MAIL/RCPT group sent together (RFC 2920
§3.1), our EHLO list, a graceful shutdown and one log line per connection.
Per-connection cost is kept low for MTAs that open a connection per message:
aiosmtpd's protocol state is set up without SMTP.__init__ (its tables are built
once per handler), and a finished connection breaks its reference cycles so
that it is freed at once rather than by the cyclic garbage collector.
Data lines are limited to `smtp.max_line_length` + 1 octets with CRLF (room
for a transparency dot), so an unstuffed line may be one octet over.

RFC 3207 §4.2 (STARTTLS): aiosmtpd clears the plaintext read buffer when the
handshake completes (`SMTP.connection_made`), so commands pipelined after
STARTTLS in the same packet are discarded, never run inside TLS
(CVE-2011-0411); tests/test_smtp_security.py proves it with a raw socket.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import socket
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, NamedTuple
from warnings import warn

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, _AuthMechAttr, TLSSetupException, login_always_fail

from config import TlsMode

from . import replies

if TYPE_CHECKING:
    from ..daemon import App
    from .handler import SmtpHandler

log = logging.getLogger("casella.smtp")

IDENT = "Casella ESMTP"
# RFC 5321 §4.5.3.1.4 gives 512 octets for a command line; MAIL grows by SIZE (RFC 1870 §8: 26),
# SMTPUTF8 (10) and BODY=8BITMIME (15). RFC 4954 §4 lets AUTH lines be as long as the reader allows.
# Sloppy mailers write `MAIL FROM:Name <addr>`: one phrase then one angle address is unambiguous.
_PHRASE_THEN_ADDRESS = re.compile(r'^\s*(?:"(?:[^"\\]|\\.)*"|[^<>"@]*?)\s*(<[^<>]*>)(.*)$')
# The common path, `<dot-atom@host.name>` then parameters, parsed here: aiosmtpd's _getaddr runs the
# RFC 5322 header parser (and builds a typing.Protocol class) on every MAIL and RCPT, a fifth of the
# loop's CPU per message. Anything else (quoted local parts, literals, UTF-8, routes) still goes there.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>(.*)\Z", re.DOTALL)
_GROUPABLE = frozenset({"MAIL", "RCPT", "RSET"})
_READ_CHUNK = 256 * 1024
# RFC 5321 §4.1.1.4: the mail data ends with <CRLF>.<CRLF> and nothing else (no bare CR or LF forms).
_END_OF_DATA = b"\r\n.\r\n"
_COMMAND_LIMITS = {"MAIL": 512 + 26 + 10 + 15, "RCPT": 512 + 10}


def _sanitized_log(func: Callable[..., None], msg: str, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's `sanitized_log`, asking the logger's level first.

    aiosmtpd passes every command line through it twice (debug, info), and it masks AUTH data
    with a regex before the logger sees that `mail.log` is at WARNING (server/logs.py).
    """
    if func.__self__.isEnabledFor(_LEVELS.get(func.__name__, logging.CRITICAL)):  # type: ignore[attr-defined]
        _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log
aiosmtpd.smtp.sanitized_log = _sanitized_log  # only that module's name, as its own call sites see it


class CasellaSession(Session):
    """aiosmtpd's session (reset on STARTTLS, RFC 3207 §4.2) plus the authenticated account."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.account: Any = None
        self.owned: frozenset[str] | None = None

    # aiosmtpd's smtp_AUTH still sets this deprecated attribute and logs a warning each time.
    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class CasellaEnvelope(Envelope):
    """One mail transaction: where each accepted recipient goes."""

    def __init__(self) -> None:
        super().__init__()
        self.local_ids: dict[int, None] = {}  # ordered set of account ids
        self.routes: dict[str, tuple[int, ...]] = {}  # local recipient -> its accounts (for bounces)
        self.remote: list[str] = []


class _CommandLimits(dict):
    """Longest command line per verb; any other verb gets aiosmtpd's 512 without being inserted."""

    def __missing__(self, verb: str) -> int:
        return SMTP.command_size_limit


@functools.lru_cache(maxsize=8)
def _command_limits(line_length_limit: int) -> _CommandLimits:
    # Shared by every connection: aiosmtpd only reads it once our smtp_EHLO replaces its own, which
    # grew the class-wide table on every EHLO; a missing verb is not stored (a plain defaultdict
    # would grow with every unknown verb any client ever sent).
    return _CommandLimits(_COMMAND_LIMITS, AUTH=line_length_limit)


@functools.lru_cache(maxsize=8)
def _long_line_pattern(line_length_limit: int) -> re.Pattern[bytes]:
    # A line over the limit (CRLF included) is an LF followed by line_length_limit octets without
    # one; anchoring on the LF keeps the scan linear (the unanchored form is quadratic-ish).
    return re.compile(rb"\n[^\n]{%d,}" % line_length_limit)


class _Tables(NamedTuple):
    commands: dict[str, Callable[..., Any]]  # verb -> smtp_* function of the connection class
    auth: dict[str, _AuthMechAttr]
    handle_hooks: dict[str, Callable[..., Any]]
    ehlo_hook_ver: str | None


_tables_by_handler: "weakref.WeakKeyDictionary[Any, dict[type, _Tables]]" = weakref.WeakKeyDictionary()


def _tables(cls: type, handler: Any) -> _Tables:
    """What aiosmtpd's SMTP.__init__ derives with dir() and getattr() for every connection, once per class and handler.

    aiosmtpd 1.4: `_smtp_methods` maps each verb to its smtp_* method, `_auth_methods` each
    mechanism to its auth_* method (the handler's win over the protocol's built-in ones), and
    `_handle_hooks` each hook to the handler's handle_* method.
    """
    per_class = _tables_by_handler.setdefault(handler, {})
    found = per_class.get(cls)
    if found is not None:
        return found
    commands = {name.replace("smtp_", ""): getattr(cls, name) for name in dir(cls) if name.startswith("smtp_")}
    auth: dict[str, _AuthMechAttr] = {}
    for owner in (cls, handler):
        for name in dir(owner):
            if name.startswith("auth_"):
                method = getattr(owner, name)
                mechanism = getattr(method, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-"))
                auth[mechanism] = _AuthMechAttr(method, owner is cls)
    # Lower-case mechanism names from sloppy clients ("auth login") mean the same thing.
    for mechanism, impl in list(auth.items()):
        auth.setdefault(mechanism.lower(), impl)
    hooks = {name.replace("handle_", ""): getattr(handler, name) for name in dir(handler) if name.startswith("handle_")}
    ehlo_hook_ver = None
    if "EHLO" in hooks:
        parameters = len(inspect.signature(hooks["EHLO"]).parameters)
        if parameters not in (4, 5):
            raise RuntimeError("Unsupported EHLO Hook")
        ehlo_hook_ver = "old" if parameters == 4 else "new"
        if ehlo_hook_ver == "old":
            warn("Use the 5-argument handle_EHLO() hook", DeprecationWarning)
    found = per_class[cls] = _Tables(commands, auth, hooks, ehlo_hook_ver)
    return found


class _Commands:
    """aiosmtpd's `_smtp_methods` for one connection: a verb is bound, through the command budget, when looked up."""

    __slots__ = ("conn", "functions")

    def __init__(self, conn: "SmtpConnection", functions: dict[str, Callable[..., Any]]) -> None:
        self.conn = conn
        self.functions = functions

    def get(self, verb: str, default: Any = None) -> Any:
        function = self.functions.get(verb)
        if function is None:
            return default
        return functools.partial(self.conn._command, verb, function)

    def items(self) -> list[tuple[str, Any]]:  # smtp_HELP
        return [(verb, self.get(verb)) for verb in self.functions]


class SmtpConnection(SMTP):
    def __init__(self, handler: "SmtpHandler", app: "App", listener_name: str, listener: Any,
                 registry: set["SmtpConnection"]) -> None:
        settings = app.settings.smtp
        loop = asyncio.get_running_loop()
        # RFC 5321 §4.5.3.1.6 allows 1000 octets per line with CRLF, plus one for a transparency dot
        # (RFC 5321 §4.5.2); it also sizes the StreamReader.
        self.line_length_limit = settings.max_line_length + 1
        # SMTP.__init__ is not called: for every connection it rebuilds its method tables with four
        # dir() calls on the protocol and the handler (~55 us of the ~60 us a connection object
        # cost) and binds every smtp_* method to the connection, one reference cycle each. These
        # are the attributes it sets (aiosmtpd 1.4), with our arguments; the tables come from
        # _tables(), once per handler. tests/test_smtp_aiosmtpd.py checks that none is missing.
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(limit=self.line_length_limit, loop=loop),
            client_connected_cb=self._cb_client_connected, loop=loop)
        self.__ident__ = IDENT
        self.loop = loop
        self.event_handler = handler
        self.data_size_limit = settings.max_message_size
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = app.hostname
        self.tls_context = app.tls.ssl_context if (listener.tls is TlsMode.STARTTLS and app.tls) else None
        self.require_starttls = False
        self._timeout_duration = settings.idle_timeout
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        # AUTH policy (which port, TLS or loopback) lives in the handler's handle_AUTH.
        self._auth_require_tls = False
        self._auth_required = False
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = login_always_fail
        self._enforce_call_limit = False
        tables = _tables(type(self), handler)
        self._smtp_methods = _Commands(self, tables.commands)  # type: ignore[assignment]
        self._auth_methods = tables.auth  # read-only below aiosmtpd, like the two tables after it
        if any(impl.is_builtin for impl in tables.auth.values()):  # not with SmtpHandler: its own win
            self._auth_methods = {mechanism: _AuthMechAttr(impl.method.__get__(self), True) if impl.is_builtin else impl
                                  for mechanism, impl in tables.auth.items()}
        self._handle_hooks = tables.handle_hooks
        self._ehlo_hook_ver = tables.ehlo_hook_ver
        self.command_size_limits = _command_limits(self.line_length_limit)

        self.app = app
        self.listener_name = listener_name
        self.implicit_tls = listener.tls is TlsMode.IMPLICIT
        self.handler = handler
        self.registry = registry
        self.max_commands = settings.max_commands_before_mail
        self.max_connections = settings.max_connections_per_ip
        self.peer_ip = "?"
        self.busy = 0  # >0 while waiting on the store: not idle, whatever the client does
        self.current: str | None = None
        self.auth_user: str | None = None
        self.helo: str | None = None
        self.tls_used: str | None = None
        self.messages = 0
        self.rejected = 0
        self.close_reason = "closed by client"
        self._commands_without_mail = 0
        self._last_activity = self._started = time.monotonic()
        self._refused = False
        self._accounted = False
        self._lost = False
        self._pending: list[bytes] = []
        self._long_line = _long_line_pattern(self.line_length_limit)

    # ------------------------------------------------------------ connection life

    def _create_session(self) -> CasellaSession:
        return CasellaSession(self.loop)

    def _create_envelope(self) -> CasellaEnvelope:
        return CasellaEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            self.peer_ip = str(peer[0]) if peer else "?"
            if not self.app.connections.acquire(("smtp", self.peer_ip), self.max_connections):
                self._refused = True
                log.info("smtp connection refused listener=%s peer=%s: over %d connections from one address",
                         self.listener_name, self.peer_ip, self.max_connections)
                transport.write(replies.TOO_MANY_CONNECTIONS.format(host=self.app.hostname).encode() + b"\r\n")
                transport.close()
                return
            self._accounted = True
            self.registry.add(self)
            # asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, which the daemon's
            # pre-bound listening socket is not; without it pipelined replies wait on delayed ACKs (40 ms).
            raw_socket = transport.get_extra_info("socket")
            if raw_socket is not None and raw_socket.family in (socket.AF_INET, socket.AF_INET6):
                raw_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self.tls_used = self.tls_description()

    def connection_lost(self, error: Exception | None) -> None:
        if self._lost:  # aiosmtpd calls it itself when a STARTTLS handshake fails, then the transport does
            return
        self._lost = True
        if self._refused:
            self._drop_references()
            return
        if self._accounted:
            self._accounted = False
            self.app.connections.release(("smtp", self.peer_ip))
            self.registry.discard(self)
            self._log_connection(error)
        super().connection_lost(error)
        task = self._handler_coroutine  # cancelled just now: it ends at its next step
        if task is None or task.done():
            self._drop_references()
        else:
            task.add_done_callback(self._drop_references)

    def _drop_references(self, _task: Any = None) -> None:
        """Break the reference cycles a finished connection is made of, so that it is freed at once.

        The protocol and its StreamWriter point at each other, the command tables hold methods bound
        to it, the handler task's CancelledError holds frames that hold it (and STARTTLS adds the SSL
        protocol). Left to the cyclic collector, every connection's ~130 objects outlived it and
        pushed the daemon's whole heap through full collections (~0.1 s each, every ~1,000
        connections). Called once the handler task has finished: nothing runs for it afterwards.
        """
        self._smtp_methods = {}
        self._auth_methods = {}
        self._client_connected_cb = None
        self._reader = self._writer = self._stream_writer = None  # type: ignore[assignment]
        self._handler_coroutine = None
        self._tls_protocol = None
        self._original_transport = None

    def _log_connection(self, error: Exception | None) -> None:
        reason = self.close_reason if error is None else f"{self.close_reason} ({error.__class__.__name__})"
        duration = time.monotonic() - self._started
        fields = {"listener": self.listener_name, "peer": self.peer_ip, "helo": self.helo, "tls": self.tls_used,
                  "user": self.auth_user, "messages": self.messages, "rejected": self.rejected,
                  "seconds": round(duration, 3), "reason": reason}
        log.info("smtp connection listener=%s peer=%s helo=%s tls=%s user=%s messages=%d rejected=%d "
                 "seconds=%.3f reason=%s", self.listener_name, self.peer_ip, self.helo, self.tls_used or "-",
                 self.auth_user or "-", self.messages, self.rejected, duration, reason, extra={"fields": fields})

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._last_activity = time.monotonic()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd re-arms the idle timer for every command (a new TimerHandle, a cancelled one left
        # in the loop's heap). An armed timer is kept instead: when it fires, _timeout_cb measures
        # the idle time from _last_activity (any bytes received) and re-arms for what is left.
        handle = self._timeout_handle
        if handle is not None:
            if duration is None and not handle.cancelled() and handle.when() > self.loop.time():
                return
            handle.cancel()
        self._timeout_handle = self.loop.call_later(duration or self._timeout_duration, self._timeout_cb)

    def _timeout_cb(self) -> None:
        idle = time.monotonic() - self._last_activity
        if self.busy or idle < self._timeout_duration:
            self._reset_timeout(max(self._timeout_duration - idle, 0.05) if not self.busy else None)
            return
        self.close_reason = "idle timeout"
        self._say_and_close(replies.IDLE_TIMEOUT.format(host=self.hostname))

    def _say_and_close(self, line: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(line.encode() + b"\r\n")
            self.transport.close()

    # ------------------------------------------------------------ shutdown

    def close_if_idle(self) -> bool:
        """Shutdown: close a connection between transactions now, leave one mid-transaction be."""
        if self.busy or self.current is not None or (self.envelope is not None and self.envelope.mail_from):
            return False
        self.close_reason = "server shutdown"
        self._say_and_close(replies.SHUTTING_DOWN.format(host=self.hostname))
        return True

    def close(self) -> None:
        self.close_reason = "server shutdown (forced)"
        self._say_and_close(replies.SHUTTING_DOWN.format(host=self.hostname))

    # ------------------------------------------------------------ commands

    @property
    def tls_active(self) -> bool:
        return self.transport is not None and self.transport.get_extra_info("ssl_object") is not None

    def tls_description(self) -> str | None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        bits = f" bits={cipher[2]}" if cipher and cipher[2] else ""
        return f"version={ssl_object.version()} cipher={cipher[0] if cipher else '?'}{bits}"

    async def _command(self, name: str, function: Callable[..., Any], arg: str | None) -> None:
        # A budget of commands outside a mail transaction stops address harvesting and
        # connections held open with NOOP/RSET/VRFY (Postfix's junk command limit).
        if name != "QUIT" and not (self.envelope and self.envelope.mail_from):
            self._commands_without_mail += 1
            if self._commands_without_mail > self.max_commands:
                self.close_reason = "too many commands before MAIL"
                await self.push(replies.TOO_MANY_COMMANDS.format(host=self.hostname))
                if self.transport is not None:
                    self.transport.close()
                return
        self.current = name
        try:
            await function(self, arg)
        finally:
            self.current = None
        if name == "MAIL" and self.envelope and self.envelope.mail_from:
            self._commands_without_mail = 0
        elif name == "QUIT":
            self.close_reason = "quit"

    async def push(self, status: Any, *, raw: bool = False) -> None:
        if isinstance(status, str):
            if not raw and status != f"250 {self.hostname}":  # HELO reply: no code (RFC 2034 §4)
                status = replies.enhance(status)
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii", "replace")
        line = status + b"\r\n"
        # RFC 2920 §3.1: replies to a pipelined group may go out together. Holding MAIL/RCPT/RSET
        # replies while the client's next command already waits in the buffer halves the packets.
        if self.current in _GROUPABLE and b"\n" in self._reader._buffer:  # type: ignore[attr-defined]
            self._pending.append(line)
            return
        if self._pending:
            line = b"".join(self._pending) + line
            self._pending.clear()
        self._writer.write(line)
        await self._writer.drain()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        simple = _SIMPLE_PATH.match(arg) if arg else None
        if simple is not None and not self.local_part_limit:
            rest = simple.group(2)
            if rest[:1] in (" ", "\t"):
                rest = rest.lstrip()  # as the header parser's folding white space does
            if not rest.startswith("("):  # a comment: the header parser's business
                return simple.group(1), rest
        match = _PHRASE_THEN_ADDRESS.match(arg or "")
        if match and not arg.lstrip().startswith("<"):
            arg = match.group(1) + match.group(2)
        return super()._getaddr(arg)

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        self.helo = hostname
        lines = [self.hostname, f"SIZE {self.data_size_limit}", "8BITMIME", "SMTPUTF8", "PIPELINING",
                 "ENHANCEDSTATUSCODES"]
        if self.tls_context and not self._tls_protocol:  # RFC 3207 §4.2: not once TLS is active
            lines.append("STARTTLS")
        if self.handler.auth_offered(self):
            lines.append("AUTH PLAIN LOGIN")
        # One write for the whole reply: a line per write was a send() per line.
        last = len(lines) - 1
        await self.push("\r\n".join(f"250{' ' if index == last else '-'}{line}" for index, line in enumerate(lines)),
                        raw=True)

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading in large chunks instead of line by line (a third of the CPU per message)."""
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, error = await self._read_data()
        if content is None:
            self._set_post_data_state()
            if error is not None:  # RFC 5321 §4.2.5: the reply comes after the whole message was read
                await self.push(error)
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(replies.OK if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes | None, str | None]:
        """The message up to <CRLF>.<CRLF>, dot-unstuffed (RFC 5321 §4.5.2), or the reply refusing it.

        Only the exact five octets end the data; bare <LF>.<LF> or <CR>.<CR> are content (SMTP
        smuggling). Oversized data is read to its end and dropped as it comes, never held.
        """
        reader = self._reader
        # The reader pauses the transport above twice its line limit (2 KB): during DATA that would
        # unregister and register the socket with epoll for every few KB. Raised while data flows.
        line_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = max(line_limit, _READ_CHUNK)  # type: ignore[attr-defined]
        try:
            return await self._read_data_chunks(reader)
        finally:
            reader._limit = line_limit  # type: ignore[attr-defined]

    async def _read_data_chunks(self, reader: asyncio.StreamReader) -> tuple[bytes | None, str | None]:
        limit = self.data_size_limit or 0
        width = self.line_length_limit
        data = bytearray(b"\r\n")  # the CRLF before the first line, so ".\r\n" at once is an empty message
        error: str | None = None
        while True:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                self.close_reason = "connection closed during DATA"
                if self.transport is not None:
                    self.transport.close()
                return None, None
            old = len(data)
            data += chunk
            end = data.find(_END_OF_DATA, max(old - 4, 0))
            if error is None:
                # Size of the stuffed data so far; a possibly partial terminator is not counted.
                size = end if end >= 0 else len(data) - 2 - 3
                if limit and size > limit:
                    error = replies.SIZE_EXCEEDED  # RFC 1870 §6.3
                elif self._long_line.search(data, max(old - width - 1, 0), end + 2 if end >= 0 else len(data)):
                    error = replies.LINE_TOO_LONG  # RFC 5321 §4.5.3.1.6
            if end >= 0:
                break
            if error is not None:
                del data[:-4]  # keep only what may begin the terminator
        leftover = data[end + len(_END_OF_DATA):]
        if leftover:  # pipelined commands after the data (RFC 2920) go back to the command reader
            reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
        if error is not None:
            return None, error
        # In place where possible: a 50 MB message should not exist in four copies at once.
        del data[end + 2:]
        del data[:2]
        if data.startswith(b"."):
            del data[:1]
        if b"\r\n." in data:
            data = data.replace(b"\r\n.", b"\r\n")
        return bytes(data), None

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.tls_active:  # aiosmtpd would start TLS inside TLS
            await self.push(replies.TLS_ACTIVE)
            return
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException:
            self.close_reason = "TLS handshake failed"  # aiosmtpd closes the connection
            raise

    async def smtp_HELO(self, hostname: str) -> None:
        await super().smtp_HELO(hostname)
        if self.session is not None and self.session.host_name:
            self.helo = self.session.host_name
