"""One settings object for every xsp process, read from ``XSP_*`` environment variables.

``Settings.from_env()`` is the only place that reads the environment for
configuration; everything else receives a ``Settings``. Each field names its
variable in ``ENV_VARS`` so the README table and the code cannot drift apart
(``tests/unit/test_settings.py`` checks that the README lists every one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

__all__ = ["ENV_VARS", "Settings", "SettingsError"]

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
_STORES = ("memory://", "rocksdb://")
_GUARANTEES = ("at_least_once", "exactly_once")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one xsp process (worker, CLI command, demo).

    Defaults are for a laptop: a local broker on 127.0.0.1:9092 and an
    in-memory table store. Production sets ``XSP_STORE=rocksdb://``.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "xsp"
    topic_prefix: str = "xsp."
    partitions: int = 4
    store: str = "memory://"
    data_dir: Path = Path(".xsp/data")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_enabled: bool = True
    processing_guarantee: ProcessingGuarantee = "at_least_once"
    consumer_fetch_max_wait_ms: int = 10
    producer_linger_ms: int = 1
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 10.0
    log_level: str = "info"
    max_future_skew_ms: int = 5 * 60 * 1000
    resolve_concurrency: int = 64
    vast_timeout_s: float = 3.0
    vast_max_hops: int = 5
    vast_allowed_networks: str = ""
    reservation_ttl_ms: int = 5_000
    tick_interval_s: float = 1.0
    api_token: str = ""
    replay_mode: bool = False
    standby_replicas: int = 0
    log_format: str = "text"
    commit_stuck_after_s: float = 20.0
    admit_batch_window_ms: int = 10
    commit_interval_ms: int = 0

    @property
    def effective_commit_interval_s(self) -> float:
        """Seconds between offset commits: ``commit_interval_ms``, or when 0 by guarantee.

        Under exactly-once a stage's outputs become visible to the next stage
        (a read-committed consumer) only when its transaction commits, so every
        hop waits for a commit: 100 ms there, as Kafka Streams does under
        exactly-once. Under at-least-once outputs are visible at once and a commit
        only bounds what a crash re-reads: Faust's 2.8 s.
        """
        if self.commit_interval_ms:
            return self.commit_interval_ms / 1000
        return 0.1 if self.exactly_once else 2.8

    @property
    def exactly_once(self) -> bool:
        """Whether workers run Kafka transactions (``processing_guarantee="exactly_once"``)."""
        return self.processing_guarantee == "exactly_once"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``).

        Unset variables keep their defaults. Raises ``SettingsError`` with a
        one-line message naming the variable and the bad value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            var = ENV_VARS[field.name]
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[field.name] = _convert(var, field.name, raw)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def with_overrides(self, **changes: object) -> Settings:
        """Return a copy with ``changes`` applied and validated (used by CLI flags)."""
        updated = replace(self, **changes)  # type: ignore[arg-type]
        updated.validate()
        return updated

    def to_env(self) -> dict[str, str]:
        """The ``XSP_*`` variables that rebuild these settings in another process."""
        env = {}
        for field in fields(self):
            value = getattr(self, field.name)
            env[ENV_VARS[field.name]] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        return env

    def validate(self) -> None:
        """Raise ``SettingsError`` if the combination of values cannot work."""
        if self.store not in _STORES:
            raise SettingsError(
                f"XSP_STORE must be one of {', '.join(_STORES)}, got {self.store!r}"
            )
        if self.processing_guarantee not in _GUARANTEES:
            raise SettingsError(
                "XSP_PROCESSING_GUARANTEE must be at_least_once or exactly_once, "
                f"got {self.processing_guarantee!r}"
            )
        if self.partitions < 1:
            raise SettingsError(f"XSP_PARTITIONS must be >= 1, got {self.partitions}")
        if not 0 <= self.web_port <= 65535:
            raise SettingsError(f"XSP_WEB_PORT must be a TCP port, got {self.web_port}")
        if not self.bootstrap_servers.strip():
            raise SettingsError("XSP_BOOTSTRAP_SERVERS must not be empty")
        if self.log_level.lower() not in ("debug", "info", "warn", "error"):
            raise SettingsError(
                f"XSP_LOG_LEVEL must be debug, info, warn or error, got {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"XSP_LOG_FORMAT must be text or json, got {self.log_format!r}")
        if self.standby_replicas < 0:
            raise SettingsError(f"XSP_STANDBY_REPLICAS must be >= 0, got {self.standby_replicas}")
        if not 0 <= self.producer_linger_ms <= 1000:
            raise SettingsError(
                f"XSP_PRODUCER_LINGER_MS must be between 0 and 1000, got {self.producer_linger_ms}"
            )
        if self.resolve_concurrency < 1:
            raise SettingsError(
                f"XSP_RESOLVE_CONCURRENCY must be >= 1, got {self.resolve_concurrency}"
            )
        if self.reservation_ttl_ms <= self.vast_timeout_s * 1000:
            raise SettingsError(
                "XSP_RESERVATION_TTL_MS must exceed the VAST deadline "
                f"(XSP_VAST_TIMEOUT_S={self.vast_timeout_s}), got {self.reservation_ttl_ms}"
            )
        if self.commit_stuck_after_s <= 0:
            raise SettingsError(
                f"XSP_COMMIT_STUCK_AFTER_S must be > 0, got {self.commit_stuck_after_s}"
            )
        if not 1 <= self.admit_batch_window_ms <= 1000:
            raise SettingsError(
                "XSP_ADMIT_BATCH_WINDOW_MS must be between 1 and 1000, "
                f"got {self.admit_batch_window_ms}"
            )
        if not 0 <= self.commit_interval_ms <= 60_000:
            raise SettingsError(
                f"XSP_COMMIT_INTERVAL_MS must be between 0 and 60000, got {self.commit_interval_ms}"
            )
        if self.session_timeout_s <= self.heartbeat_interval_s:
            raise SettingsError(
                "XSP_SESSION_TIMEOUT_S must be greater than XSP_HEARTBEAT_INTERVAL_S"
            )


ENV_VARS: dict[str, str] = {
    "bootstrap_servers": "XSP_BOOTSTRAP_SERVERS",
    "app_id": "XSP_APP_ID",
    "topic_prefix": "XSP_TOPIC_PREFIX",
    "partitions": "XSP_PARTITIONS",
    "store": "XSP_STORE",
    "data_dir": "XSP_DATA_DIR",
    "web_host": "XSP_WEB_HOST",
    "web_port": "XSP_WEB_PORT",
    "web_enabled": "XSP_WEB_ENABLED",
    "processing_guarantee": "XSP_PROCESSING_GUARANTEE",
    "consumer_fetch_max_wait_ms": "XSP_CONSUMER_FETCH_MAX_WAIT_MS",
    "producer_linger_ms": "XSP_PRODUCER_LINGER_MS",
    "session_timeout_s": "XSP_SESSION_TIMEOUT_S",
    "heartbeat_interval_s": "XSP_HEARTBEAT_INTERVAL_S",
    "rebalance_timeout_s": "XSP_REBALANCE_TIMEOUT_S",
    "log_level": "XSP_LOG_LEVEL",
    "max_future_skew_ms": "XSP_MAX_FUTURE_SKEW_MS",
    "resolve_concurrency": "XSP_RESOLVE_CONCURRENCY",
    "vast_timeout_s": "XSP_VAST_TIMEOUT_S",
    "vast_max_hops": "XSP_VAST_MAX_HOPS",
    "vast_allowed_networks": "XSP_VAST_ALLOWED_NETWORKS",
    "reservation_ttl_ms": "XSP_RESERVATION_TTL_MS",
    "tick_interval_s": "XSP_TICK_INTERVAL_S",
    "api_token": "XSP_API_TOKEN",
    "replay_mode": "XSP_REPLAY_MODE",
    "standby_replicas": "XSP_STANDBY_REPLICAS",
    "log_format": "XSP_LOG_FORMAT",
    "commit_stuck_after_s": "XSP_COMMIT_STUCK_AFTER_S",
    "admit_batch_window_ms": "XSP_ADMIT_BATCH_WINDOW_MS",
    "commit_interval_ms": "XSP_COMMIT_INTERVAL_MS",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(var: str, name: str, raw: str) -> object:
    """Turn the text of ``var`` into the type of field ``name``."""
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        raise SettingsError(f"{var} must be {kind}, got {raw!r}") from None
    return raw.strip()
