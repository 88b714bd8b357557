"""Change events: what happened to a mailbox, published after commit.

Sessions subscribe per mailbox id and get events in commit order: a message
appeared (EXISTS), UIDs vanished (EXPUNGE / RFC 7162 VANISHED), flags changed
(FETCH FLAGS with MODSEQ). With PostgreSQL the same events also cross
processes through LISTEN/NOTIFY (channel `casella_changes`), so two casella
nodes on one database see each other's changes; each node ignores its own.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable, Union

log = logging.getLogger("casella.changes")

NOTIFY_CHANNEL = "casella_changes"
# PostgreSQL caps a NOTIFY payload at 8000 bytes; bigger events are split.
_MAX_UIDS_PER_NOTIFY = 500


@dataclass(frozen=True, slots=True)
class MessageAdded:
    mailbox_id: int
    uid: int
    modseq: int
    flags: int
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MessagesExpunged:
    mailbox_id: int
    uids: tuple[int, ...]
    modseq: int


@dataclass(frozen=True, slots=True)
class FlagsChanged:
    mailbox_id: int
    uid: int
    modseq: int
    flags: int
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MailboxDeleted:
    """The mailbox is gone (DELETE, or RENAME away): sessions on it must close it."""

    mailbox_id: int


Change = Union[MessageAdded, MessagesExpunged, FlagsChanged, MailboxDeleted]
Listener = Callable[[Change], None]

_KINDS: dict[str, type] = {
    "added": MessageAdded,
    "expunged": MessagesExpunged,
    "flags": FlagsChanged,
    "deleted": MailboxDeleted,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def encode(change: Change) -> dict:
    data = asdict(change)
    data["kind"] = _KIND_OF[type(change)]
    return data


def decode(data: dict) -> Change:
    cls = _KINDS[data.pop("kind")]
    for key in ("keywords", "uids"):
        if key in data:
            data[key] = tuple(data[key])
    return cls(**data)


class ChangeBus:
    """In-process fan-out of committed changes to per-mailbox listeners.

    Listeners are plain callables run on the event loop; they must not block.
    A listener that raises is logged and does not stop the others.
    """

    def __init__(self) -> None:
        self._listeners: dict[int, list[Listener]] = defaultdict(list)
        self.node_id = uuid.uuid4().hex[:12]
        self._remote: "PostgresRelay | None" = None

    def subscribe(self, mailbox_id: int, listener: Listener) -> Callable[[], None]:
        self._listeners[mailbox_id].append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(mailbox_id)
            if listeners and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[mailbox_id]

        return unsubscribe

    def publish(self, changes: "list[Change] | tuple[Change, ...]") -> None:
        """Deliver committed changes here, and to other nodes when a relay is attached."""
        self.dispatch_local(changes)
        if self._remote is not None and changes:
            self._remote.send(changes)

    def dispatch_local(self, changes: "list[Change] | tuple[Change, ...]") -> None:
        for change in changes:
            for listener in list(self._listeners.get(change.mailbox_id, ())):
                try:
                    listener(change)
                except Exception:  # a broken session must not break delivery
                    log.exception("change listener failed for mailbox %s", change.mailbox_id)

    def attach_relay(self, relay: "PostgresRelay") -> None:
        self._remote = relay


class PostgresRelay:
    """Carries changes between casella processes through PostgreSQL LISTEN/NOTIFY."""

    def __init__(self, bus: ChangeBus, dsn: str) -> None:
        self._bus = bus
        self._dsn = dsn
        self._listen_conn = None
        self._send_conn = None
        self._send_lock = asyncio.Lock()
        self._pending: list[asyncio.Task] = []

    async def start(self) -> None:
        import asyncpg  # only needed with PostgreSQL

        self._listen_conn = await asyncpg.connect(self._dsn)
        self._send_conn = await asyncpg.connect(self._dsn)
        await self._listen_conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._bus.attach_relay(self)

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:  # noqa: ANN001
        try:
            message = json.loads(payload)
            if message.get("node") == self._bus.node_id:
                return
            self._bus.dispatch_local([decode(item) for item in message["changes"]])
        except Exception:
            log.exception("bad change notification: %.200s", payload)

    def send(self, changes: "list[Change] | tuple[Change, ...]") -> None:
        payloads = []
        batch: list[dict] = []
        for change in changes:
            if isinstance(change, MessagesExpunged) and len(change.uids) > _MAX_UIDS_PER_NOTIFY:
                for start in range(0, len(change.uids), _MAX_UIDS_PER_NOTIFY):
                    part = MessagesExpunged(change.mailbox_id,
                                            change.uids[start:start + _MAX_UIDS_PER_NOTIFY], change.modseq)
                    payloads.append([encode(part)])
                continue
            batch.append(encode(change))
            if len(batch) >= 40:
                payloads.append(batch)
                batch = []
        if batch:
            payloads.append(batch)
        task = asyncio.ensure_future(self._send(payloads))
        self._pending.append(task)
        task.add_done_callback(self._pending.remove)

    async def _send(self, payloads: list[list[dict]]) -> None:
        async with self._send_lock:
            for items in payloads:
                try:
                    await self._send_conn.execute(
                        "SELECT pg_notify($1, $2)", NOTIFY_CHANNEL,
                        json.dumps({"node": self._bus.node_id, "changes": items}))
                except Exception:
                    log.exception("could not NOTIFY other nodes")

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        for conn in (self._listen_conn, self._send_conn):
            if conn is not None:
                await conn.close()
        self._bus.attach_relay(None)  # type: ignore[arg-type]
