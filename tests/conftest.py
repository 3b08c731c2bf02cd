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
from typing import Any

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


@pytest.fixture(scope="session")
def mock_adserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of one ``xsp mock-adserver`` subprocess on loopback for the session."""
    from streams.devstack import MockAdServerProcess

    server = MockAdServerProcess(tmp_path_factory.mktemp("adserver") / "mock.log").start()
    try:
        yield server.base_url
    finally:
        server.stop()


class Stack:
    """A running pipeline for one test: its settings, topic names and worker processes."""

    def __init__(self, settings: Settings, ad_server: str, workdir: Path) -> None:
        from streams.topics import TopicNames

        self.settings = settings
        self.ad_server = ad_server
        self.workdir = workdir
        self.names = TopicNames.from_prefix(settings.topic_prefix)
        self.workers: list[Any] = []

    def put_campaigns(self, configs: list[dict[str, Any]]) -> None:
        import asyncio
        import json

        from streams.campaign_admin import put_campaigns

        asyncio.run(
            put_campaigns(self.settings.bootstrap_servers, self.names, json.dumps(configs).encode())
        )

    def start_worker(self, **overrides: Any) -> Any:
        """Start one more ``xsp worker`` (own data dir and web port) and return it."""
        from streams.devstack import WorkerProcess, _free_port

        index = len(self.workers)
        settings = self.settings.with_overrides(
            data_dir=self.workdir / f"worker-{index}",
            web_port=_free_port(),
            **overrides,
        )
        worker = WorkerProcess(settings, self.workdir / f"worker-{index}.log").start()
        self.workers.append(worker)
        return worker

    def restart(self, worker: Any) -> Any:
        """A new process with the same settings (data dir, web port) as ``worker``."""
        from streams.devstack import WorkerProcess

        log = worker.log_path.with_name(f"{worker.log_path.stem}-r{len(self.workers)}.log")
        replacement = WorkerProcess(worker.settings, log).start()
        self.workers[self.workers.index(worker)] = replacement
        return replacement

    def worker_url(self, worker: Any) -> str:
        return f"http://127.0.0.1:{worker.settings.web_port}"

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def xsp_stack(xsp_settings: Settings, mock_adserver: str, tmp_path: Path) -> Iterator[Stack]:
    """Topics created, settings for the mock ad server; start workers with ``start_worker``."""
    import asyncio

    from streams.kafka_io import create_xsp_topics
    from streams.topics import TopicNames

    settings = xsp_settings.with_overrides(
        web_enabled=True, vast_allowed_networks="127.0.0.1/32", tick_interval_s=0.5
    )
    asyncio.run(
        create_xsp_topics(
            settings.bootstrap_servers,
            TopicNames.from_prefix(settings.topic_prefix),
            partitions=settings.partitions,
        )
    )
    stack = Stack(settings, mock_adserver, tmp_path)
    try:
        yield stack
    finally:
        stack.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print why each known failure failed: the xfail summary shows only the marker's reason.

    The chaos test's assertion messages say how far undecided requests got;
    without this they were lost in every CI log.
    """
    for report in terminalreporter.stats.get("xfailed", []):
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            message = " ".join(str(crash.message).split())
            terminalreporter.write_line(f"XFAIL cause {report.nodeid}: {message[:3000]}")
