"""Dovecot's imaptest against Casella: its scripted tests and a short stress run.

Runs only where the `imaptest` binary exists (/usr/local/bin/imaptest or on PATH);
the scripted tests need its source `tests/` directory, found through
CASELLA_IMAPTEST_TESTS or next to the binary. Otherwise the tests skip and say why.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from .test_imap_support import message


def _binary() -> str | None:
    if os.access("/usr/local/bin/imaptest", os.X_OK):
        return "/usr/local/bin/imaptest"
    return shutil.which("imaptest")


IMAPTEST = _binary()
pytestmark = pytest.mark.skipif(IMAPTEST is None, reason="imaptest not installed (build dovecot/imaptest against "
                                                         "dovecot-dev and put it on PATH to run these)")


#: Scripted groups known to fail, each with its reason (reported in the closing note, never hidden).
#: None today: listext passes since subscriptions became names of their own (0002_subscriptions).
KNOWN_FAILURES: set[str] = set()


def _tests_dir() -> str | None:
    candidates = [os.environ.get("CASELLA_IMAPTEST_TESTS", "")]
    if IMAPTEST:
        base = os.path.dirname(os.path.realpath(IMAPTEST))
        candidates += [os.path.join(base, "tests"), os.path.join(base, "..", "src", "tests"),
                       os.path.join(base, "..", "share", "imaptest", "tests")]
    for path in candidates:
        if path and os.path.isdir(path):
            return path
    return None


def _mbox(tmp_path) -> str:
    path = tmp_path / "source.mbox"
    with open(path, "wb") as handle:
        for i in range(20):
            handle.write(b"From sender@example.test Mon Jan  1 00:00:00 2024\n")
            handle.write(message(f"imaptest {i}", body=f"message number {i}\r\n" * (i + 1)).replace(b"\r\n", b"\n"))
            handle.write(b"\n")
    return str(path)


def test_imaptest_scripted(server, tmp_path):
    tests_dir = _tests_dir()
    if tests_dir is None:
        pytest.skip("imaptest's scripted tests directory not found (set CASELLA_IMAPTEST_TESTS)")
    user = server.new_user()
    mbox = os.path.join(tests_dir, "default.mbox")
    result = subprocess.run(
        [IMAPTEST, f"host={server.host}", f"port={server.port('imap')}", f"user={user.address}",
         f"pass={user.password}", f"mbox={mbox if os.path.exists(mbox) else _mbox(tmp_path)}",
         f"test={tests_dir}"],
        capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    print(output[-5000:])
    summary = re.search(r"(\d+) test groups: (\d+) failed, (\d+) skipped", output)
    assert summary, output[-3000:]
    failing = set(re.findall(r"\*\*\* Test (\S+) command", output))
    assert failing <= KNOWN_FAILURES, (failing - KNOWN_FAILURES, output[-5000:])
    assert "Error:" not in output, output[-5000:]


def test_imaptest_stress(server, tmp_path):
    user = server.new_user()
    result = subprocess.run(
        [IMAPTEST, f"host={server.host}", f"port={server.port('imap')}", f"user={user.address}",
         f"pass={user.password}", f"mbox={_mbox(tmp_path)}", "clients=20", "secs=10"],
        capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    print(output[-3000:])
    problems = [line for line in output.splitlines() if line.startswith(("Error:", "BUG:", "Panic:"))]
    assert not problems, "\n".join(problems[:20])
    assert re.search(r"^Totals:", output, re.MULTILINE), output[-3000:]
