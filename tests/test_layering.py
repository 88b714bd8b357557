"""Architecture rules that a test enforces (CONVENTIONS.md): layering, settings and their file."""
from __future__ import annotations

import ast
import pathlib
import tomllib

import yaml

from config import Settings, load_settings

ROOT = pathlib.Path(__file__).resolve().parent.parent


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_under_server_imports_sqlalchemy():
    offenders = []
    for path in sorted((ROOT / "server").rglob("*.py")):
        for name in imported_modules(path):
            if name == "sqlalchemy" or name.startswith("sqlalchemy.") or name.startswith("storage.models") \
                    or name.startswith("storage.queries") or name.startswith("storage.engine"):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "protocol code must reach the store only through MailStore:\n" + "\n".join(offenders)


def test_pytest_plugin_imports_none_of_casellas_packages():
    names = imported_modules(ROOT / "pytest_casella.py")
    assert not {n for n in names if n.split(".")[0] in ("server", "storage", "config")}


def test_default_toml_matches_the_schema():
    with open(ROOT / "config" / "casella.toml", "rb") as handle:
        from_file = tomllib.load(handle)
    assert from_file == load_settings().model_dump(mode="json"), \
        "config/casella.toml and config/settings.py disagree; keep every default in both"


def _keys(model_fields, prefix=""):
    keys = set()
    for name, field in model_fields.items():
        annotation = field.annotation
        if hasattr(annotation, "model_fields"):
            keys |= _keys(annotation.model_fields, prefix + name + "__")
        else:
            keys.add(prefix + name)
    return keys


def test_compose_file_passes_only_settings_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    valid = {"CASELLA_" + key.upper() for key in _keys(Settings.model_fields)}
    passed = []
    for service in compose["services"].values():
        environment = service.get("environment", {})
        items = environment.keys() if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        passed += [name for name in items if name.startswith("CASELLA_")]
    assert passed, "the compose file should configure casella through CASELLA_* variables"
    unknown = sorted(set(passed) - valid)
    assert not unknown, f"docker-compose.yml sets settings the schema does not have: {unknown}"
