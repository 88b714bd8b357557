"""Settings: defaults, a user file, CASELLA_* environment overrides, and clear errors."""
from __future__ import annotations

import pytest

from config import ConfigError, TlsMode, load_settings


def test_file_then_environment_override(tmp_path, monkeypatch):
    config = tmp_path / "casella.toml"
    config.write_text('[smtp]\nmax_recipients = 7\n[listeners.imap]\nport = 10143\n')
    monkeypatch.setenv("CASELLA_LISTENERS__IMAP__PORT", "20143")
    settings = load_settings(str(config))
    assert settings.smtp.max_recipients == 7
    assert settings.listeners.imap.port == 20143
    assert settings.listeners.imap.tls is TlsMode.STARTTLS  # untouched keys keep their default


def test_dev_profile_is_below_environment(monkeypatch):
    monkeypatch.setenv("CASELLA_LISTENERS__SMTP__PORT", "0")
    settings = load_settings(dev=True)
    assert settings.listeners.smtp.port == 0
    assert settings.listeners.smtp.address == "127.0.0.1"
    assert settings.listeners.imap.port == 1143
    assert settings.database.url.startswith("sqlite:///") and settings.database.url.endswith("var/casella.db")


@pytest.mark.parametrize("text,needle", [
    ("[listeners.smtp]\nport = 99999\n", "listeners.smtp.port"),
    ("[smtp]\nmax_recipients = 'many'\n", "smtp.max_recipients"),
    ("[smtp]\nno_such_key = 1\n", "smtp.no_such_key"),
    ("[pop3]\ndelete_policy = 'shred'\n", "pop3.delete_policy"),
    ("[server]\ngil_switch_interval_ms = 0\n", "server.gil_switch_interval_ms"),
    ("[database]\nsqlite_inline = 'sometimes'\n", "database.sqlite_inline"),
])
def test_invalid_values_name_the_key_and_the_file(tmp_path, text, needle):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(str(config))
    assert needle in str(error.value) and str(config) in str(error.value)


def test_broken_toml_and_missing_file(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("[smtp\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(str(config))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(str(tmp_path / "missing.toml"))


def test_invalid_environment_value(monkeypatch):
    monkeypatch.setenv("CASELLA_IMAP__IDLE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="imap.idle_timeout"):
        load_settings()
