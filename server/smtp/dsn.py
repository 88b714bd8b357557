"""Delivery status notifications (RFC 3464) for recipients the store refused after the 250.

The only such case today is a local recipient over quota while others got the
message: RFC 5321 §6.1 says a server that accepted a message and then cannot
deliver it MUST notify the sender. Never for a null reverse-path (a bounce
never bounces). Auto-Submitted per RFC 3834.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timezone
from email.utils import format_datetime


def _headers_of(content: bytes, limit: int = 64 * 1024) -> bytes:
    end = content.find(b"\r\n\r\n")
    head = content[: end + 2] if end >= 0 else content
    return head[:limit]


def build_dsn(hostname: str, ident: str, sender: str, failed: list[str], content: bytes,
              status: str = "5.2.2", diagnostic: str = "552 5.2.2 Mailbox full") -> bytes:
    boundary = f"{ident}.{secrets.token_hex(8)}/{hostname}"
    now = format_datetime(datetime.now(timezone.utc))
    listing = "".join(f"  <{rcpt}>: mailbox full\r\n" for rcpt in failed)
    per_recipient = "".join(
        f"\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n" for rcpt in failed)
    text = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{sender}>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {now}\r\n"
        f"Message-ID: <{ident}.{secrets.token_hex(4)}.dsn@{hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is the mail system at {hostname}.\r\n\r\n"
        f"Your message (id {ident}) could not be delivered to these recipients:\r\n\r\n{listing}\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {hostname}\r\n"
        f"X-Casella-Queue-ID: {ident}\r\n"
        f"Arrival-Date: {now}\r\n"
        f"{per_recipient}\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
    ).encode("utf-8", "surrogateescape")
    return text + _headers_of(content) + f"\r\n--{boundary}--\r\n".encode()
