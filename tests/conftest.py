"""Shared fixtures: one real Kafka broker for the session, unique names per test.

The broker comes from, in order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (any Kafka you already run);
2. a testcontainers Kafka if a Docker daemon answers;
3. the project's own launcher (``streams.kafka_local``): Apache Kafka 4.x from
   Maven Central jars, KRaft, loopback only, data in a temp dir, stopped at
   the end (and killed with the test process if that dies first).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.kafka_local import LocalKafka
from streams.settings import Settings


def _docker_answers() -> bool:
    try:
        import docker  # testcontainers depends on it

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for the whole test session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    info = broker.start()
    print(
        f"\n[conftest] local Apache Kafka on {info.bootstrap_servers}, up in {info.started_in_s} s"
    )
    try:
        yield info.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
def unique() -> str:
    """A short unique token for topic prefixes and app ids of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def xsp_settings(kafka_bootstrap: str, unique: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topic prefix, app id and data dir, no web server."""
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        app_id=f"xsp-test-{unique}",
        topic_prefix=f"t{unique}.",
        partitions=4,
        data_dir=tmp_path / "worker-data",
        web_enabled=False,
        session_timeout_s=6.0,
        heartbeat_interval_s=0.5,
        rebalance_timeout_s=6.0,
    )
