"""Delivery Status Notifications (RFC 3464) for failed and delayed recipients.

A DSN is a multipart/report (RFC 6522) with report-type=delivery-status: a
human-readable part, the message/delivery-status part (per-message and
per-recipient fields, §2.2 and §2.3), and the original message's header as
text/rfc822-headers. It is sent with a null reverse-path (RFC 5321 §4.5.5),
so it can never cause another bounce, and carries `Auto-Submitted:
auto-replied` (RFC 3834).
Not implemented: returning the full original body (RET=FULL, RFC 3461).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Sequence


@dataclass(frozen=True, slots=True)
class RecipientReport:
    address: str
    action: str  # failed | delayed
    status: str  # RFC 3463, e.g. 5.1.1
    diagnostic: str  # the remote reply or our own description
    remote_mta: str = ""


def _header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end + 2]


def _clean(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def build_dsn(*, hostname: str, sender: str, original: bytes, reports: Sequence[RecipientReport],
              arrival: datetime, retry_until: datetime | None = None, now: datetime | None = None) -> bytes:
    now = now or datetime.now(timezone.utc)
    boundary = f"=_casella_{secrets.token_hex(12)}"
    failed = [r for r in reports if r.action == "failed"]
    subject = ("Undelivered Mail Returned to Sender" if failed
               else "Delayed Mail (still being retried)")
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <dsn.{secrets.token_hex(10)}@{hostname}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    if failed:
        lines.append(f"This is the mail system at {hostname}. Your message could not be delivered to "
                     "the following recipients:")
    else:
        lines.append(f"This is the mail system at {hostname}. Your message has not been delivered yet "
                     "to the following recipients; delivery will be retried"
                     + (f" until {format_datetime(retry_until)}." if retry_until else "."))
    lines.append("")
    for report in reports:
        lines.append(f"  <{report.address}>: {_clean(report.diagnostic)}")
    lines += ["", f"--{boundary}", "Content-Type: message/delivery-status", ""]
    # RFC 3464 §2.2: per-message fields
    lines += [f"Reporting-MTA: dns; {hostname}", f"Arrival-Date: {format_datetime(arrival)}", ""]
    for report in reports:  # RFC 3464 §2.3: per-recipient fields
        lines.append(f"Final-Recipient: rfc822; {report.address}")
        lines.append(f"Action: {report.action}")
        lines.append(f"Status: {report.status}")
        if report.remote_mta:
            lines.append(f"Remote-MTA: dns; {report.remote_mta}")
        diagnostic = _clean(report.diagnostic)
        if diagnostic[:3].isdigit():
            lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
        else:
            lines.append(f"Diagnostic-Code: X-Casella; {diagnostic}")
        lines.append(f"Last-Attempt-Date: {format_datetime(now)}")
        if report.action == "delayed" and retry_until is not None:
            lines.append(f"Will-Retry-Until: {format_datetime(retry_until)}")
        lines.append("")
    lines += [f"--{boundary}", "Content-Type: text/rfc822-headers", ""]
    text = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    headers = _header_block(original).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return text + headers + f"\r\n--{boundary}--\r\n".encode()
