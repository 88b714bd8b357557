"""pytest plugin: a `casella` fixture running the Casella daemon as a subprocess.

A Twisted reactor cannot be restarted inside a test process, so the daemon
runs in its own process (dev profile, every port 0 so the OS picks free ones,
a temporary SQLite file unless a database URL is given) and reports its ports
on stdout. Tests keep plain blocking stdlib clients. This module imports none
of Casella's packages: it drives the `casella` command only.

    def test_signup_mail(casella):
        casella.add_user("me@example.test", "s3cret-pass")
        send_signup_mail(smtp_port=casella.ports["smtp"])
        ...
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

LISTENERS = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")


def free_port() -> int:
    """A loopback port nothing listens on now (for a server a test or bench starts, or to be refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def casella_command() -> list[str]:
    beside = Path(sys.executable).with_name("casella")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("casella")
    if found:
        return [found]
    return [sys.executable, "-m", "server.cli"]


class CasellaServer:
    """A running `casella serve --dev` subprocess and the ways to talk to it."""

    def __init__(self, workdir: str, *, database_url: str | None = None,
                 env: dict[str, str] | None = None, config_file: str | None = None,
                 startup_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.env = dict(os.environ)
        self.env.update({f"CASELLA_LISTENERS__{name.upper()}__PORT": "0" for name in LISTENERS})
        self.env["CASELLA_SERVER__HOSTNAME"] = "localhost"
        if database_url:
            self.env["CASELLA_DATABASE__URL"] = database_url
        self.env.update(env or {})
        self.database_url = self.env.get("CASELLA_DATABASE__URL", f"sqlite:///{workdir}/var/casella.db")
        self.config_args = ["-c", config_file] if config_file else []
        self.ports: dict[str, int] = {}
        self.stderr_lines: list[str] = []
        self.process = subprocess.Popen(
            [*casella_command(), "serve", "--dev", *self.config_args], cwd=workdir, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self._wait_ready(startup_timeout)
        self._drains = [
            threading.Thread(target=self._drain, args=(self.process.stderr, self.stderr_lines), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stdout, []), daemon=True),
        ]
        for thread in self._drains:
            thread.start()

    @staticmethod
    def _drain(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            if len(sink) > 5000:
                del sink[:1000]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith("CASELLA-READY "):
                self.ports = json.loads(line.split(" ", 1)[1])
                return
        self.process.kill()
        err = self.process.stderr.read() if self.process.stderr else ""
        raise RuntimeError(f"casella did not start: {err[-3000:]}")

    @property
    def cert_file(self) -> str:
        return os.path.join(self.workdir, "var", "tls", "cert.pem")

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run `casella ARGS --dev` against this server's database."""
        command = [*casella_command(), *args, "--dev", *self.config_args]
        result = subprocess.run(command, cwd=self.workdir, env=self.env, input=input,
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"casella {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def add_user(self, address: str, password: str) -> None:
        domain = address.rpartition("@")[2]
        self.cli("domain", "add", domain, check=False)
        self.cli("user", "add", address, "--password-stdin", input=password + "\n")

    def log_text(self) -> str:
        return "".join(self.stderr_lines)

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for thread in self._drains:  # the last log lines are read before anyone looks at them
            thread.join(5)
        return self.process.returncode


@pytest.fixture(scope="session")
def casella():
    """A Casella daemon for the whole test session (SQLite in a temporary directory)."""
    workdir = tempfile.mkdtemp(prefix="casella-")
    server = CasellaServer(workdir)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
