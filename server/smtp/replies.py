"""SMTP reply lines, one constant each, with RFC 3463 enhanced status codes (RFC 2034).

aiosmtpd writes some replies of its own without enhanced codes; `enhance()`
maps those to ours (by exact text, else by reply code) so that every line a
client sees after EHLO carries one, as ENHANCEDSTATUSCODES promises.
"""
from __future__ import annotations

import re

# ---- successes
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
QUEUED = "250 2.0.0 OK: message {ident} accepted"
AUTH_OK = "235 2.7.0 Authentication successful"
BYE = "221 2.0.0 Bye"
READY_TLS = "220 2.0.0 Ready to start TLS"
VRFY_CANNOT = "252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery"

# ---- temporary failures
STORE_FAILURE = "451 4.3.0 Temporary failure storing the message, try again later"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"  # RFC 5321 §4.5.3.1.8
MAILBOX_FULL = "452 4.2.2 Mailbox full"
TOO_MANY_CONNECTIONS = "421 4.7.0 {host} Too many connections from your address, try again later"
IDLE_TIMEOUT = "421 4.4.2 {host} Idle timeout, closing connection"
TOO_MANY_COMMANDS = "421 4.7.0 {host} Too many commands without a transaction, closing connection"
AUTH_LOCKED = "421 4.7.0 {host} Too many failed logins from your address, try again later"
SHUTTING_DOWN = "421 4.3.2 {host} Service shutting down, closing connection"
TLS_NOT_AVAILABLE = "454 4.7.0 TLS not available"

# ---- permanent failures
LINE_TOO_LONG = "500 5.5.2 Line too long"  # RFC 5321 §4.5.3.1.6
SYNTAX_ERROR = "500 5.5.2 Syntax error"
NOT_RECOGNIZED = "500 5.5.1 Command not recognized"
AUTH_NOT_AVAILABLE = "503 5.5.1 AUTH not available on this port"
TLS_ACTIVE = "554 5.5.1 TLS already active"
ALREADY_AUTHENTICATED = "503 5.5.1 Already authenticated"
NESTED_MAIL = "503 5.5.1 Nested MAIL command"
NEED_MAIL = "503 5.5.1 Need MAIL command first"
NEED_RCPT = "503 5.5.1 Need RCPT command first"
AUTH_MALFORMED = "501 5.5.2 Malformed authentication data"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"  # RFC 4954 §6
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"  # RFC 4954 §6
NO_SUCH_USER = "550 5.1.1 No such user here"
RELAY_DENIED = "554 5.7.1 Relay access denied"
SENDER_NOT_OWNED = "553 5.7.1 Sender address not owned by the authenticated user"
BAD_ADDRESS = "553 5.1.3 Malformed address"
MAILBOX_FULL_FINAL = "552 5.2.2 Mailbox full"  # in over-quota notices, after the message was accepted
SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed maximum message size"  # RFC 1870 §6.1

# aiosmtpd's own texts -> ours (aiosmtpd 1.4).
_BY_TEXT = {
    "250 OK": OK,
    "221 Bye": BYE,
    "220 Ready to start TLS": READY_TLS,
    "454 TLS not available": TLS_NOT_AVAILABLE,
    "500 Command line too long": LINE_TOO_LONG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
    "500 Error: bad syntax": SYNTAX_ERROR,
    "503 Already authenticated": ALREADY_AUTHENTICATED,
    "503 Error: nested MAIL command": NESTED_MAIL,
    "503 Error: need MAIL command": NEED_MAIL,
    "503 Error: need RCPT command": NEED_RCPT,
    "552 Error: message size exceeds fixed maximum message size": SIZE_EXCEEDED,
    "552 Error: Too much mail data": SIZE_EXCEEDED,
    "553 5.1.3 Error: malformed address": BAD_ADDRESS,
    "252 Cannot VRFY user, but will accept message and attempt delivery": VRFY_CANNOT,
}
# Fallback by reply code (RFC 3463 §3 classes) for any other aiosmtpd text.
_BY_CODE = {
    "250": "2.0.0", "251": "2.1.5", "252": "2.1.5",
    "421": "4.3.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0", "551": "5.1.6",
    "552": "5.3.4", "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def enhance(line: str) -> str:
    """Give an aiosmtpd reply line an enhanced status code (RFC 2034 §4) if it lacks one."""
    mapped = _BY_TEXT.get(line)
    if mapped is not None:
        return mapped
    if line.startswith("500 Error: command ") and line.endswith("not recognized"):
        return NOT_RECOGNIZED
    if _HAS_ENHANCED.match(line) or len(line) < 3:
        return line
    code = line[:3]
    detail = _BY_CODE.get(code)
    if detail is None:  # 220 greeting, 334 challenges, 354: no enhanced code (RFC 2034 §4)
        return line
    rest = line[4:] if len(line) > 4 else ""
    for prefix in ("Error: ", "Error "):
        if rest.startswith(prefix):
            rest = rest[len(prefix):]
    return f"{code} {detail} {rest}".rstrip()
