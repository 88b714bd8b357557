"""The `casella` command: round trips through the store and one-line errors, on both backends."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from pytest_casella import casella_command
from server.cli import main


def make_cli(database_url, tmp_path, monkeypatch, capsys):
    """Run `casella ARGS` in this process: the real parser and commands, without
    a Python start-up per call (a subprocess test below covers the entry point)."""
    monkeypatch.setenv("CASELLA_DATABASE__URL", database_url)
    monkeypatch.chdir(tmp_path)

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "stdin", io.StringIO(input or ""))
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


@pytest.fixture
def cli(database_url, tmp_path, monkeypatch, capsys):
    """On both backends: the round trips."""
    return make_cli(database_url, tmp_path, monkeypatch, capsys)


@pytest.fixture
def sqlite_cli(tmp_path, monkeypatch, capsys):
    """Error paths are the store's and the parser's, the same on both backends: SQLite keeps them quick."""
    return make_cli(f"sqlite:///{tmp_path}/casella.db", tmp_path, monkeypatch, capsys)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_round_trips(cli):
    one_line_error(cli("domain", "list"), "casella db upgrade")
    assert "revision" in ok(cli("db", "upgrade"))
    assert "up to date" in ok(cli("db", "status"))
    ok(cli("domain", "add", "Example.TEST"))
    assert ok(cli("domain", "list")).split() == ["example.test"]
    ok(cli("user", "add", "alice@example.test", "--quota", "10M", "--password-stdin", input="long-password-1\n"))
    ok(cli("user", "add", "bob@example.test", "--password-stdin", input="long-password-2\n"))
    listing = ok(cli("user", "list"))
    assert "alice@example.test" in listing and "quota 10.0M" in listing and "bob@example.test" in listing
    assert "of 1.0G" in ok(cli("user", "quota", "alice@example.test", "1G"))
    ok(cli("user", "passwd", "bob@example.test", "--password-stdin", input="long-password-3\n"))
    ok(cli("user", "pop3-policy", "bob@example.test", "keep"))
    ok(cli("alias", "add", "sales@example.test", "alice@example.test"))
    assert "sales@example.test -> alice@example.test" in ok(cli("alias", "list"))
    ok(cli("domain", "catchall", "example.test", "bob@example.test"))
    assert "catch-all -> bob@example.test" in ok(cli("domain", "list"))
    ok(cli("alias", "remove", "sales@example.test"))
    ok(cli("user", "remove", "bob@example.test"))
    assert "bob@" not in ok(cli("user", "list"))
    assert "queue is empty" in ok(cli("queue", "list"))


def test_error_paths_are_one_line(sqlite_cli):
    cli = sqlite_cli
    ok(cli("db", "upgrade"))
    ok(cli("domain", "add", "example.test"))
    one_line_error(cli("domain", "add", "example.test"), "already exists")
    one_line_error(cli("domain", "add", "not a domain"), "malformed domain")
    one_line_error(cli("user", "add", "x@unknown.test", "--password-stdin", input="long-password\n"),
                   "unknown domain")
    one_line_error(cli("user", "add", "not-an-address", "--password-stdin", input="long-password\n"),
                   "malformed address")
    one_line_error(cli("user", "add", "x@example.test", "--password-stdin", input="short\n"), "at least 8")
    one_line_error(cli("user", "add", "x@example.test", "--password-stdin", input="\n"), "empty password")
    one_line_error(cli("user", "add", "x@example.test"), "--password-stdin")  # no terminal to prompt on
    ok(cli("user", "add", "x@example.test", "--password-stdin", input="long-password\n"))
    one_line_error(cli("user", "add", "x@example.test", "--password-stdin", input="long-password\n"),
                   "already exists")
    one_line_error(cli("user", "remove", "nobody@example.test"), "no such account")
    one_line_error(cli("user", "quota", "x@example.test", "lots"), "bad size")
    one_line_error(cli("alias", "remove", "none@example.test"), "no such alias")
    one_line_error(cli("domain", "remove", "example.test"), "still has accounts")


def test_check_config_reports_bad_settings(sqlite_cli, tmp_path):
    cli = sqlite_cli
    bad = tmp_path / "bad.toml"
    bad.write_text("[listeners.smtp]\nport = -1\n")
    one_line_error(cli("check-config", "-c", str(bad)), "listeners.smtp.port")
    assert "configuration ok" in ok(cli("check-config", "--dev"))


def test_the_console_script_works_end_to_end(tmp_path):
    """The installed `casella` command itself, in a subprocess, as a user runs it."""
    env = dict(os.environ, CASELLA_DATABASE__URL=f"sqlite:///{tmp_path}/casella.db")

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*casella_command(), *args], env=env, cwd=tmp_path, input=input,
                              capture_output=True, text=True, timeout=60)

    ok(run("db", "upgrade"))
    ok(run("domain", "add", "example.test"))
    ok(run("user", "add", "me@example.test", "--password-stdin", input="long-password-1\n"))
    assert "me@example.test" in ok(run("user", "list"))
    one_line_error(run("user", "add", "me@example.test", "--password-stdin", input="long-password-1\n"),
                   "already exists")
