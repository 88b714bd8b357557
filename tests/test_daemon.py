"""The daemon as a user runs it: `casella serve --dev` in a subprocess, signals, schema checks."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from pytest_casella import LISTENERS, CasellaServer, casella_command


def test_serve_dev_opens_every_port_and_stops_on_sigterm_within_5s(tmp_path):
    server = CasellaServer(str(tmp_path))
    try:
        assert set(server.ports) == set(LISTENERS)
        for name, port in server.ports.items():
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        assert os.path.exists(tmp_path / "var" / "casella.db")
        assert os.path.exists(server.cert_file)
    finally:
        started = time.monotonic()
        code = server.stop(timeout=10)
        elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 5, f"SIGTERM took {elapsed:.1f}s"


def test_dev_certificate_is_kept_and_reused(tmp_path):
    first = CasellaServer(str(tmp_path))
    cert = open(first.cert_file).read()
    first.stop()
    second = CasellaServer(str(tmp_path))
    try:
        assert open(second.cert_file).read() == cert
    finally:
        second.stop()


def test_sighup_reloads_the_certificate(tmp_path):
    from server.tls import generate_self_signed

    server = CasellaServer(str(tmp_path))
    try:
        port = server.ports["imaps"]

        def served_certificate() -> bytes:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    return tls.getpeercert(binary_form=True)

        try:
            before = served_certificate()
        except (ConnectionError, ssl.SSLError, OSError):
            pytest.skip("the imaps listener is not serving yet (IMAP issue in progress)")
        key_file = os.path.join(os.path.dirname(server.cert_file), "key.pem")
        generate_self_signed(server.cert_file, key_file, "localhost")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and served_certificate() == before:
            time.sleep(0.2)
        assert served_certificate() != before
        assert "TLS certificate reloaded" in server.log_text()
    finally:
        server.stop()


def test_serve_refuses_an_out_of_date_schema_and_says_what_to_run(tmp_path):
    env = dict(os.environ, CASELLA_DATABASE__AUTO_UPGRADE="false",
               **{f"CASELLA_LISTENERS__{name.upper()}__PORT": "0" for name in LISTENERS})
    result = subprocess.run([*casella_command(), "serve", "--dev"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "casella db upgrade" in result.stderr and "Traceback" not in result.stderr


def test_invalid_config_fails_at_start_with_key_and_file(tmp_path):
    config = tmp_path / "casella.toml"
    config.write_text("[imap]\nidle_timeout = 'forever'\n")
    result = subprocess.run([*casella_command(), "serve", "-c", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "imap.idle_timeout" in result.stderr and str(config) in result.stderr
    assert "Traceback" not in result.stderr


def test_port_already_in_use_is_one_clear_line(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    env = dict(os.environ, **{f"CASELLA_LISTENERS__{name.upper()}__PORT": "0" for name in LISTENERS})
    env["CASELLA_LISTENERS__IMAP__PORT"] = str(port)
    try:
        result = subprocess.run([*casella_command(), "serve", "--dev"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
    finally:
        blocker.close()
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_json_logs(tmp_path):
    import json

    server = CasellaServer(str(tmp_path), env={"CASELLA_SERVER__LOG_FORMAT": "json"})
    # Stopped straight after the ready line: the signal must already be handled by then.
    assert server.stop() == 0, server.log_text()
    lines = [line for line in server.log_text().splitlines() if line.startswith("{")]
    assert lines, server.log_text()
    records = [json.loads(line) for line in lines]
    assert any("stopped" in record["msg"] for record in records)


def test_drops_privileges_after_binding():
    if os.geteuid() != 0:
        pytest.skip("privilege drop needs the test to run as root")
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    # pytest's tmp_path lives under a 0700 directory; nobody needs a path it can reach.
    workdir = tempfile.mkdtemp(prefix="casella-drop-")
    os.chmod(workdir, 0o777)
    server = CasellaServer(workdir, env={"CASELLA_SERVER__USER": "nobody", "CASELLA_SERVER__GROUP": group})
    try:
        with open(f"/proc/{server.process.pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        assert fields["Uid"].split()[0] == str(nobody.pw_uid)
        assert fields["Gid"].split()[0] == str(nobody.pw_gid)
        with socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=5) as conn:
            assert conn.recv(100).startswith(b"* OK")
    finally:
        assert server.stop() == 0
        shutil.rmtree(workdir, ignore_errors=True)
