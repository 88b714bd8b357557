"""The `casella` command: serve, check-config, db, domain, user, alias, queue, dkim, dns.

Every mistake (unknown domain, duplicate user, malformed address, weak or
empty password, bad config) is one line on stderr and a non-zero exit.
Passwords come from a prompt or `--password-stdin`, never from argv.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any, Awaitable, Callable

from config import ConfigError, Settings, load_settings
from storage import MailStore, Pop3DeletePolicy
from storage.errors import StoreError

EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(Exception):
    pass


def _read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to prompt for the password: use --password-stdin")
        password = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != password:
            raise CliError("passwords do not match")
    if not password:
        raise CliError("empty password")
    return password


def _parse_size(text: str) -> int | None:
    """'0'/'none' = unlimited; else bytes with optional K/M/G suffix (1024-based)."""
    value = text.strip().upper()
    if value in ("0", "NONE", "UNLIMITED"):
        return None
    multiplier = 1
    for suffix, factor in (("K", 1024), ("M", 1024 ** 2), ("G", 1024 ** 3)):
        if value.endswith(suffix) or value.endswith(suffix + "B"):
            multiplier = factor
            value = value.rstrip("B")[:-1]
            break
    try:
        size = int(value) * multiplier
    except ValueError:
        raise CliError(f"bad size {text!r}: use bytes or a K/M/G suffix, 0 for unlimited") from None
    if size < 0:
        raise CliError("size must not be negative")
    return size


def _human(size: int | None) -> str:
    if size is None:
        return "unlimited"
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return str(size)


async def _with_store(settings: Settings, action: Callable[[MailStore], Awaitable[Any]]) -> Any:
    from storage.migrate import schema_state

    store = await MailStore.open(settings.database.url, auth_cache_seconds=0)
    try:
        state = await schema_state(store.db)
        if not state.up_to_date:
            raise CliError(f"database schema is at {state.current or 'nothing'}, needs {state.head}: "
                           "run 'casella db upgrade' first")
        return await action(store)
    finally:
        await store.close()


# ----------------------------------------------------------------- commands

def cmd_serve(args: argparse.Namespace) -> int:
    from .daemon import serve

    return serve(args.config, dev=args.dev)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, dev=args.dev)
    enabled = [f"{name}={getattr(settings.listeners, name).port}"
               for name in type(settings.listeners).model_fields if getattr(settings.listeners, name).enabled]
    print(f"configuration ok: database {settings.database.url}; listeners {' '.join(enabled)}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from storage.migrate import schema_state, upgrade

    async def run() -> str:
        store = await MailStore.open(settings.database.url)
        try:
            await upgrade(store.db)
            return (await schema_state(store.db)).current or ""
        finally:
            await store.close()

    print(f"database at revision {asyncio.run(run())}")
    return 0


def cmd_db_status(args: argparse.Namespace, settings: Settings) -> int:
    from storage.migrate import schema_state

    async def run():
        store = await MailStore.open(settings.database.url)
        try:
            return await schema_state(store.db)
        finally:
            await store.close()

    state = asyncio.run(run())
    print(f"current {state.current or 'none'}, head {state.head}: "
          + ("up to date" if state.up_to_date else "run 'casella db upgrade'"))
    return 0 if state.up_to_date else EXIT_ERROR


def cmd_domain(args: argparse.Namespace, settings: Settings) -> int:
    async def run(store: MailStore) -> None:
        if args.action == "add":
            domain = await store.add_domain(args.name)
            print(f"added domain {domain.name}")
        elif args.action == "remove":
            await store.remove_domain(args.name)
            print(f"removed domain {args.name.lower()}")
        elif args.action == "catchall":
            await store.set_catchall(args.name, args.target or None)
            print(f"catch-all for {args.name.lower()}: {args.target or 'off'}")
        else:
            for domain in await store.list_domains():
                print(domain.name + (f"  catch-all -> {domain.catchall}" if domain.catchall else ""))

    asyncio.run(_with_store(settings, run))
    return 0


def cmd_user(args: argparse.Namespace, settings: Settings) -> int:
    password = _read_password(args) if args.action in ("add", "passwd") else None

    async def run(store: MailStore) -> None:
        if args.action == "add":
            quota = _parse_size(args.quota) if args.quota else None
            account = await store.add_account(args.address, password, quota_bytes=quota)
            print(f"added user {account.address}")
        elif args.action == "passwd":
            await store.set_password(args.address, password or "")
            print(f"password changed for {args.address.lower()}")
        elif args.action == "remove":
            await store.remove_account(args.address)
            print(f"removed user {args.address.lower()}")
        elif args.action == "quota":
            if args.size is not None:
                await store.set_quota(args.address, _parse_size(args.size))
            account = await store.get_account(args.address)
            if account is None:
                raise CliError(f"no such account: {args.address}")
            print(f"{account.address}: used {_human(account.used_bytes)} of {_human(account.quota_bytes)}")
        elif args.action == "pop3-policy":
            await store.set_pop3_delete_policy(args.address, None if args.policy == "default"
                                               else Pop3DeletePolicy(args.policy))
            print(f"pop3 delete policy for {args.address.lower()}: {args.policy}")
        else:
            for account in await store.list_accounts(args.domain):
                print(f"{account.address}  used {_human(account.used_bytes)} quota {_human(account.quota_bytes)}")

    asyncio.run(_with_store(settings, run))
    return 0


def cmd_alias(args: argparse.Namespace, settings: Settings) -> int:
    async def run(store: MailStore) -> None:
        if args.action == "add":
            alias = await store.add_alias(args.source, args.target)
            print(f"added alias {alias.source} -> {alias.target}")
        elif args.action == "remove":
            count = await store.remove_alias(args.source, args.target)
            print(f"removed {count} alias{'es' if count != 1 else ''} for {args.source.lower()}")
        else:
            for alias in await store.list_aliases(args.domain):
                print(f"{alias.source} -> {alias.target}")

    asyncio.run(_with_store(settings, run))
    return 0


def cmd_queue(args: argparse.Namespace, settings: Settings) -> int:
    async def run(store: MailStore) -> None:
        items = await store.list_outbound()
        if not items:
            print("queue is empty")
        for item in items:
            print(f"{item.id}  from <{item.mail_from}> to {', '.join(item.recipients)}  "
                  f"attempts {item.attempts}  next {item.next_attempt_at:%Y-%m-%d %H:%M:%S}"
                  + (f"  last error: {item.last_error}" if item.last_error else ""))

    asyncio.run(_with_store(settings, run))
    return 0


# ---- the outbound queue, DKIM keys and the DNS records to publish

def cmd_queue_item(args: argparse.Namespace, settings: Settings) -> int:
    async def run(store: MailStore) -> None:
        if args.action == "show":
            item = await store.get_outbound(args.id)
            if item is None:
                raise CliError(f"no queued message {args.id}")
            print(f"id {item.id}  from <{item.mail_from}>  queued {item.created_at:%Y-%m-%d %H:%M:%S}  "
                  f"attempts {item.attempts}  next {item.next_attempt_at:%Y-%m-%d %H:%M:%S}"
                  + ("  delayed notice sent" if item.delayed_notice_sent else "")
                  + (f"  leased by {item.locked_by}" if item.locked_by else ""))
            for rcpt in item.recipients:
                print(f"  {rcpt.address}  {rcpt.status}" + (f"  {rcpt.last_reply}" if rcpt.last_reply else ""))
            if item.last_error:
                print(f"last error: {item.last_error}")
        elif args.action == "retry":
            count = await store.retry_outbound(None if args.id == "all" else _queue_id(args.id))
            print(f"{count} item(s) due now")
        elif args.action == "delete":
            if not await store.delete_outbound(args.id):
                raise CliError(f"no queued message {args.id}")
            print(f"deleted {args.id} (no bounce sent)")

    asyncio.run(_with_store(settings, run))
    return 0


def _queue_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliError(f"not a queue id: {text}") from None


def cmd_dkim(args: argparse.Namespace, settings: Settings) -> int:
    from .mailauth.dkim import generate_key, key_dir, txt_lines

    domain = args.domain.lower().rstrip(".")
    selector = args.selector or settings.dkim.selector
    algorithm = args.algorithm or settings.dkim.algorithm
    try:
        path, record = generate_key(key_dir(settings), domain, selector, algorithm, settings.dkim.rsa_bits)
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    print(f"; {algorithm} key written to {path}; publish this record, then outgoing mail of {domain} is signed")
    print(txt_lines(f"{selector}._domainkey.{domain}", record))
    return 0


def cmd_dns(args: argparse.Namespace, settings: Settings) -> int:
    """Every record a domain needs: MX, SPF, DKIM, DMARC, and client autoconfiguration (RFC 6186 SRV)."""
    from pathlib import Path

    from .mailauth.dkim import key_dir, public_record, txt_lines

    domain = args.domain.lower().rstrip(".")
    host = settings.server.hostname
    print(f"; DNS records for {domain}, served by {host}")
    print(f"{domain}. IN MX 10 {host}.")
    print(f'{domain}. IN TXT "v=spf1 mx -all"')  # RFC 7208: only our MX host sends for the domain
    keys = sorted(Path(key_dir(settings), domain).glob("*.key"))
    for path in keys:
        print(txt_lines(f"{path.stem}._domainkey.{domain}", public_record(path)))
    if not keys:
        print(f"; no DKIM key for {domain}: run 'casella dkim generate {domain}' and publish its record")
    print(f'_dmarc.{domain}. IN TXT "v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@{domain}"')
    print("; client autoconfiguration (RFC 6186; Thunderbird looks up autoconfig.<domain>)")
    print(f"autoconfig.{domain}. IN CNAME {host}.")
    listeners = settings.listeners
    for service, name in (("submissions", "submissions"), ("submission", "submission"), ("imaps", "imaps"),
                          ("imap", "imap"), ("pop3s", "pop3s"), ("pop3", "pop3")):
        listener = getattr(listeners, name)
        if listener.enabled:
            print(f"_{service}._tcp.{domain}. IN SRV 0 1 {listener.port} {host}.")
        else:
            print(f"_{service}._tcp.{domain}. IN SRV 0 0 0 .")  # RFC 6186 §4: service not provided
    return 0


# ----------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="casella", description="Casella mail server (SMTP, POP3, IMAP)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help="settings file (TOML); defaults in config/casella.toml")
    common.add_argument("--dev", action="store_true", help="the development profile (./var, ports 2525/1143/...)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", parents=[common], help="run the server").set_defaults(func=cmd_serve, raw=True)
    commands.add_parser("check-config", parents=[common], help="validate the settings and exit") \
        .set_defaults(func=cmd_check_config, raw=True)

    db = commands.add_parser("db", help="database schema")
    db_actions = db.add_subparsers(dest="action", required=True)
    db_actions.add_parser("upgrade", parents=[common], help="apply migrations").set_defaults(func=cmd_db_upgrade)
    db_actions.add_parser("status", parents=[common], help="show the schema revision").set_defaults(func=cmd_db_status)

    domain = commands.add_parser("domain", help="local mail domains")
    domain_actions = domain.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        sub = domain_actions.add_parser(action, parents=[common])
        sub.add_argument("name")
    catchall = domain_actions.add_parser("catchall", parents=[common], help="set or clear (empty) the catch-all")
    catchall.add_argument("name")
    catchall.add_argument("target", nargs="?", default="")
    domain_actions.add_parser("list", parents=[common])
    domain.set_defaults(func=cmd_domain)

    user = commands.add_parser("user", help="mail accounts")
    user_actions = user.add_subparsers(dest="action", required=True)
    add = user_actions.add_parser("add", parents=[common])
    add.add_argument("address")
    add.add_argument("--quota", help="e.g. 2G, 500M; 0 for unlimited")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first stdin line")
    passwd = user_actions.add_parser("passwd", parents=[common])
    passwd.add_argument("address")
    passwd.add_argument("--password-stdin", action="store_true")
    remove = user_actions.add_parser("remove", parents=[common])
    remove.add_argument("address")
    quota = user_actions.add_parser("quota", parents=[common], help="show or set (SIZE) the quota")
    quota.add_argument("address")
    quota.add_argument("size", nargs="?")
    policy = user_actions.add_parser("pop3-policy", parents=[common], help="what POP3 DELE does for this user")
    policy.add_argument("address")
    policy.add_argument("policy", choices=["expunge", "archive", "keep", "default"])
    user_list = user_actions.add_parser("list", parents=[common])
    user_list.add_argument("domain", nargs="?")
    user.set_defaults(func=cmd_user)

    alias = commands.add_parser("alias", help="address aliases")
    alias_actions = alias.add_subparsers(dest="action", required=True)
    alias_add = alias_actions.add_parser("add", parents=[common])
    alias_add.add_argument("source")
    alias_add.add_argument("target")
    alias_remove = alias_actions.add_parser("remove", parents=[common])
    alias_remove.add_argument("source")
    alias_remove.add_argument("target", nargs="?")
    alias_list = alias_actions.add_parser("list", parents=[common])
    alias_list.add_argument("domain", nargs="?")
    alias.set_defaults(func=cmd_alias)

    queue = commands.add_parser("queue", help="the outbound queue")
    queue_actions = queue.add_subparsers(dest="action", required=True)
    queue_actions.add_parser("list", parents=[common])
    queue.set_defaults(func=cmd_queue)
    for action, help_text in (("show", "one item with every recipient"), ("delete", "drop it, no bounce")):
        sub = queue_actions.add_parser(action, parents=[common], help=help_text)
        sub.add_argument("id", type=int)
        sub.set_defaults(func=cmd_queue_item)
    retry = queue_actions.add_parser("retry", parents=[common], help="make an item (or 'all') due now")
    retry.add_argument("id")
    retry.set_defaults(func=cmd_queue_item)
    dkim = commands.add_parser("dkim", help="DKIM signing keys")
    dkim_actions = dkim.add_subparsers(dest="action", required=True)
    generate = dkim_actions.add_parser("generate", parents=[common], help="create a key, print its TXT record")
    generate.add_argument("domain")
    generate.add_argument("--selector", help="default: dkim.selector")
    generate.add_argument("--algorithm", choices=["rsa-sha256", "ed25519-sha256"], help="default: dkim.algorithm")
    dkim.set_defaults(func=cmd_dkim)
    dns = commands.add_parser("dns", parents=[common], help="print the DNS records a domain needs")
    dns.add_argument("domain")
    dns.set_defaults(func=cmd_dns)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "raw", False):
            return args.func(args)
        settings = load_settings(args.config, dev=args.dev)
        return args.func(args, settings)
    except ConfigError as exc:
        print(f"casella: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, StoreError) as exc:
        print(f"casella: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"casella: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
