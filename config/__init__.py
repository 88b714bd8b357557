"""Casella's settings: the schema (settings.py) and every default (casella.toml)."""
from .settings import ConfigError, Listener, Settings, TlsMode, dev_profile, load_settings  # noqa: F401
