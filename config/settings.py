"""Settings schema (pydantic-settings): every knob Casella has, with its default.

Sources, strongest first: environment variables `CASELLA_<SECTION>__<KEY>`,
the user's file (`casella serve -c FILE`), the `--dev` profile, then these
defaults, which `config/casella.toml` repeats with comments (a test keeps the
two equal). Built once by the daemon or the CLI and passed down; there is no
module-level singleton.
"""
from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_TOML = Path(__file__).with_name("casella.toml")


class TlsMode(str, Enum):
    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Listener(Strict):
    enabled: bool = True
    address: str = "0.0.0.0"
    port: int = Field(ge=0, le=65535)
    tls: TlsMode = TlsMode.NONE


class Listeners(Strict):
    smtp: Listener = Listener(port=25, tls=TlsMode.STARTTLS)
    submission: Listener = Listener(port=587, tls=TlsMode.STARTTLS)
    submissions: Listener = Listener(port=465, tls=TlsMode.IMPLICIT)
    pop3: Listener = Listener(port=110, tls=TlsMode.STARTTLS)
    pop3s: Listener = Listener(port=995, tls=TlsMode.IMPLICIT)
    imap: Listener = Listener(port=143, tls=TlsMode.STARTTLS)
    imaps: Listener = Listener(port=993, tls=TlsMode.IMPLICIT)


class ServerSettings(Strict):
    hostname: str = "localhost"
    data_dir: str = "/var/lib/casella"
    # Drop root to this user/group after binding the ports (empty: stay as is).
    user: str = ""
    group: str = ""
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Seconds SIGTERM waits for in-flight work before closing everything.
    shutdown_timeout: float = Field(default=10.0, gt=0)
    # How long the busy event loop may hold the GIL before a thread that waits for it (a COMMIT
    # returning from its fsync) gets it: Python's default is 5 ms, paid by every write's caller.
    gil_switch_interval_ms: float = Field(default=0.5, gt=0, le=100)


class DatabaseSettings(Strict):
    url: str = "sqlite:////var/lib/casella/casella.db"
    # Run pending migrations at start instead of refusing to start.
    auto_upgrade: bool = False
    pool_size: int = Field(default=10, ge=1)
    busy_timeout_ms: int = Field(default=10000, ge=0)
    # Verified credentials are cached this long (Dovecot's auth cache); 0 disables.
    auth_cache_seconds: float = Field(default=60.0, ge=0)
    # Message contents read for IMAP FETCH are kept in memory up to this many MB (0 = off), so a
    # client fetching the same messages again costs no database read; messages over 1 MB are not kept.
    content_cache_mb: int = Field(default=64, ge=0)
    # SQLite: light operations (a few rows through an index) run their statements on the event
    # loop, their commit in the writer thread; off sends every statement to a thread.
    sqlite_inline: bool = True


class TlsSettings(Strict):
    cert_file: str = "/etc/casella/tls/cert.pem"
    key_file: str = "/etc/casella/tls/key.pem"
    # Generate a self-signed certificate for server.hostname when the files are missing.
    self_signed_if_missing: bool = False
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


class AuthSettings(Strict):
    # Plaintext AUTH/LOGIN/USER before TLS is refused except from loopback (as Dovecot does).
    allow_plaintext_on_loopback: bool = True
    allow_plaintext_anywhere: bool = False
    # Throttling shared by SMTP, POP3 and IMAP: failures per client address within window...
    failures_before_delay: int = Field(default=3, ge=1)
    failure_delay_seconds: float = Field(default=2.0, ge=0)
    failures_before_lockout: int = Field(default=10, ge=1)
    failure_window_seconds: float = Field(default=300.0, gt=0)
    lockout_seconds: float = Field(default=600.0, ge=0)


class SmtpSettings(Strict):
    max_message_size: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=100, ge=1)
    max_line_length: int = Field(default=1000, ge=80)
    max_commands_before_mail: int = Field(default=30, ge=1)
    max_connections_per_ip: int = Field(default=20, ge=1)
    idle_timeout: float = Field(default=300.0, gt=0)
    # Dev mode: mail for any address that is not an account here (local or remote) lands in this one.
    catch_all_account: str = ""


class Pop3Settings(Strict):
    # expunge (RFC 1939), archive (move to Archive) or keep (hide from POP3 only).
    delete_policy: Literal["expunge", "archive", "keep"] = "expunge"
    # RFC 1939 §3 requires at least 10 minutes.
    idle_timeout: float = Field(default=600.0, ge=1)
    max_connections_per_ip: int = Field(default=50, ge=1)
    # The maildrop lock outlives a crashed process by at most this long; live sessions renew it.
    maildrop_lock_seconds: float = Field(default=120.0, ge=3)
    # Longest command line accepted (RFC 2449 §4 allows 255 octets; AUTH responses need more).
    max_line_length: int = Field(default=4096, ge=256)
    # Unknown or malformed commands a session may send before it is closed.
    max_bad_commands: int = Field(default=20, ge=1)


class ImapSettings(Strict):
    # RFC 3501 §5.4 requires at least 30 minutes; IDLE clients renew every 29.
    idle_timeout: float = Field(default=1800.0, ge=1)
    max_connections_per_ip: int = Field(default=100, ge=1)
    max_connections_per_account: int = Field(default=100, ge=1)
    # Largest APPEND literal accepted (RFC 7889 APPENDLIMIT).
    max_append_size: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_line_length: int = Field(default=64 * 1024, ge=1024)


# ---- issue 6: outbound delivery, DNS, DKIM, mail authentication

class DnsSettings(Strict):
    # Resolver for MX/A/TXT lookups: empty = the system's /etc/resolv.conf.
    nameservers: list[str] = []
    port: int = Field(default=53, ge=1, le=65535)
    timeout: float = Field(default=5.0, gt=0)


class SmartHost(Strict):
    # Relay every outbound message through this host instead of MX delivery ("" = off).
    host: str = ""
    port: int = Field(default=587, ge=1, le=65535)
    tls: TlsMode = TlsMode.STARTTLS
    username: str = ""
    password: str = ""
    # Check the smart host's certificate (off only for a dev relay with a self-signed one).
    verify_certificate: bool = True


class OutboundSettings(Strict):
    # Run the delivery worker in the daemon.
    enabled: bool = True
    # Concurrent SMTP deliveries of one worker.
    concurrency: int = Field(default=20, ge=1)
    # Seconds between queue polls when nothing wakes the worker earlier.
    poll_interval: float = Field(default=1.0, gt=0)
    # A claimed item stays ours this long; a crashed worker's items come back after it.
    lease_seconds: float = Field(default=600.0, gt=0)
    # Exponential backoff (RFC 5321 §4.5.4.1): first retry after this, times factor, capped.
    retry_initial_seconds: float = Field(default=300.0, gt=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_max_seconds: float = Field(default=14400.0, gt=0)
    # Give up and bounce after this long (RFC 5321 §4.5.4.1: 4-5 days).
    lifetime_seconds: float = Field(default=432000.0, gt=0)
    # Send a "delayed" DSN (RFC 3464 Action: delayed) once a message waits this long.
    delayed_notice_seconds: float = Field(default=14400.0, gt=0)
    # Port for MX delivery (25; tests point it at a loopback listener).
    smtp_port: int = Field(default=25, ge=1, le=65535)
    connect_timeout: float = Field(default=30.0, gt=0)
    # RFC 5321 §4.5.3.2 suggests minutes per command; one value for all of them here.
    command_timeout: float = Field(default=300.0, gt=0)
    # Name given in EHLO ("" = server.hostname).
    helo_name: str = ""
    # Opportunistic STARTTLS with MX hosts (certificate not checked, RFC 7435).
    starttls: bool = True
    # Keep a connection this long after a transaction for the next message to that host (0 = off).
    connection_cache_seconds: float = Field(default=2.0, ge=0)
    # Per-domain override: "domain" = "host:port" ("[host]:port" skips the MX lookup of host).
    transport_map: dict[str, str] = {}
    smart_host: SmartHost = SmartHost()


class DkimSettings(Strict):
    # Sign outgoing mail of local domains with every key in key_dir/<domain>/<selector>.key.
    enabled: bool = True
    # Where keys live ("" = <server.data_dir>/dkim).
    key_dir: str = ""
    # Defaults for `casella dkim generate`.
    selector: str = "casella"
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"
    rsa_bits: int = Field(default=2048, ge=1024)


class MailauthSettings(Strict):
    # SPF, DKIM and DMARC checks on mail received on the MX listener.
    enabled: bool = True
    # What a DMARC p=reject failure gets: "reject" (550 5.7.1 at end of DATA) or "quarantine" (Junk).
    dmarc_reject_action: Literal["reject", "quarantine"] = "reject"
    # Honour p=quarantine by filing into Junk.
    dmarc_quarantine: bool = True
    # authserv-id of our Authentication-Results ("" = server.hostname).
    authserv_id: str = ""


class DevSettings(Strict):
    demo_account: str = "demo@localhost"
    demo_password: str = "demo-password"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CASELLA_", env_nested_delimiter="__",
                                      extra="forbid", case_sensitive=False)

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    listeners: Listeners = Listeners()
    smtp: SmtpSettings = SmtpSettings()
    pop3: Pop3Settings = Pop3Settings()
    imap: ImapSettings = ImapSettings()
    dev: DevSettings = DevSettings()
    # issue 6
    dns: DnsSettings = DnsSettings()
    outbound: OutboundSettings = OutboundSettings()
    dkim: DkimSettings = DkimSettings()
    mailauth: MailauthSettings = MailauthSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        user_file = _LOAD_CONTEXT.get("file")
        if user_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=user_file))
        profile = _LOAD_CONTEXT.get("profile")
        if profile:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=profile))
        # Last, every section's defaults as data: sources are deep-merged, so a file that sets
        # only [listeners.imap] port keeps that listener's other defaults (tls = "starttls").
        sources.append(InitSettingsSource(settings_cls, init_kwargs=_section_defaults(settings_cls)))
        return tuple(sources)


def _section_defaults(settings_cls: type[BaseSettings]) -> dict[str, Any]:
    return {name: field.default.model_dump(mode="json") for name, field in settings_cls.model_fields.items()
            if isinstance(field.default, BaseModel)}


# Which file/profile the next Settings() reads; set only inside load_settings().
_LOAD_CONTEXT: dict[str, Any] = {}


def dev_profile(base_dir: str = "var") -> dict[str, Any]:
    """`casella serve --dev`: no file needed, unprivileged ports, SQLite and a cert under ./var."""
    base = os.path.abspath(base_dir)

    def listener(port: int, tls: str) -> dict[str, Any]:
        return {"address": "127.0.0.1", "port": port, "tls": tls}

    return {
        "server": {"hostname": "localhost", "data_dir": base},
        "database": {"url": f"sqlite:///{base}/casella.db", "auto_upgrade": True},
        "tls": {"cert_file": f"{base}/tls/cert.pem", "key_file": f"{base}/tls/key.pem",
                "self_signed_if_missing": True},
        "listeners": {
            "smtp": listener(2525, "starttls"), "submission": listener(2587, "starttls"),
            "submissions": listener(2465, "implicit"), "pop3": listener(1110, "starttls"),
            "pop3s": listener(1995, "implicit"), "imap": listener(1143, "starttls"),
            "imaps": listener(1993, "implicit"),
        },
        "smtp": {"catch_all_account": "demo@localhost"},
        # issue 6: caught dev mail is not judged (no SPF/DKIM/DMARC lookups, no Authentication-Results).
        "mailauth": {"enabled": False},
    }


class ConfigError(Exception):
    """One line per problem: the key, where it came from, the reason."""


def load_settings(config_file: str | None = None, *, dev: bool = False,
                  overrides: dict[str, Any] | None = None) -> Settings:
    if config_file and not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
    if config_file:
        _check_toml_syntax(config_file)
    _LOAD_CONTEXT.clear()
    _LOAD_CONTEXT.update({"file": config_file, "profile": dev_profile() if dev else None})
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        where = f"{config_file} or CASELLA_* environment" if config_file else "CASELLA_* environment or defaults"
        lines = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            lines.append(f"invalid setting {key} (from {where}): {error['msg']}")
        raise ConfigError("\n".join(lines)) from None
    finally:
        _LOAD_CONTEXT.clear()


def _check_toml_syntax(path: str) -> None:
    import tomllib

    try:
        with open(path, "rb") as handle:
            tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
