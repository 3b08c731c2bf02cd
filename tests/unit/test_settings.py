"""Settings come from XSP_* variables; mistakes are one-line errors naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.settings import ENV_VARS, Settings, SettingsError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.store == "memory://"


def test_values_are_converted_to_their_types() -> None:
    settings = Settings.from_env(
        {
            "XSP_PARTITIONS": "8",
            "XSP_WEB_ENABLED": "off",
            "XSP_STORE": "rocksdb://",
            "XSP_DATA_DIR": "/tmp/x",
            "XSP_SESSION_TIMEOUT_S": "7.5",
        }
    )
    assert settings.partitions == 8
    assert settings.web_enabled is False
    assert settings.store == "rocksdb://"
    assert settings.data_dir == Path("/tmp/x")
    assert settings.session_timeout_s == 7.5


def test_round_trip_through_environment() -> None:
    original = Settings(partitions=3, store="rocksdb://", web_enabled=False, app_id="a")
    assert Settings.from_env(original.to_env()) == original


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"XSP_PARTITIONS": "many"}, "XSP_PARTITIONS must be int, got 'many'"),
        ({"XSP_PARTITIONS": "0"}, "XSP_PARTITIONS must be >= 1"),
        ({"XSP_STORE": "redis://"}, "XSP_STORE must be one of memory://, rocksdb://"),
        ({"XSP_WEB_ENABLED": "maybe"}, "XSP_WEB_ENABLED must be true/false"),
        ({"XSP_PROCESSING_GUARANTEE": "twice"}, "XSP_PROCESSING_GUARANTEE must be"),
        ({"XSP_WEB_PORT": "70000"}, "XSP_WEB_PORT must be a TCP port"),
        ({"XSP_COMMIT_INTERVAL_MS": "-1"}, "XSP_COMMIT_INTERVAL_MS must be between 0 and 60000"),
    ],
)
def test_bad_values_raise_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env(env)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_readme_documents_every_variable() -> None:
    documented = set(re.findall(r"`(XSP_[A-Z_]+)`", README.read_text()))
    missing = set(ENV_VARS.values()) - documented
    assert not missing, f"README configuration table lacks {sorted(missing)}"


def test_commit_interval_follows_the_guarantee_unless_set() -> None:
    assert Settings().effective_commit_interval_s == 2.8
    exactly_once = Settings(processing_guarantee="exactly_once")
    assert exactly_once.effective_commit_interval_s == 0.1
    chosen = Settings.from_env({"XSP_COMMIT_INTERVAL_MS": "500"})
    assert chosen.effective_commit_interval_s == 0.5
