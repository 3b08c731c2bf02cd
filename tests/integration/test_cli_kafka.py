"""`xsp topics create`, `xsp send` and `xsp dev` against real brokers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from streams.kafka_io import read_topic
from streams.records import AdRequest, decode
from streams.settings import Settings
from streams.topics import TopicNames


def xsp(
    settings: Settings, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **settings.to_env()},
        check=False,
    )


def test_topics_create_then_send(xsp_settings: Settings, tmp_path: Path) -> None:
    names = TopicNames.from_prefix(xsp_settings.topic_prefix)
    created = xsp(xsp_settings, "topics", "create", "--partitions", "3")
    assert created.returncode == 0, created.stderr
    assert f"created {len(names.all())} topics" in created.stdout

    sent = xsp(xsp_settings, "send", "--user", "alice", "--campaign", "camp-9", "--count", "3")
    assert sent.returncode == 0, sent.stderr
    request_file = tmp_path / "requests.jsonl"
    request_file.write_text(
        '{"request_id":"file-1","user_id":"bob","timestamp":1764000000000}\n'
        '{"request_id":"file-2","user_id":"bob","timestamp":1764000000001}\n'
    )
    from_file = xsp(xsp_settings, "send", "--file", str(request_file))
    assert from_file.returncode == 0, from_file.stderr
    from_stdin = xsp(
        xsp_settings,
        "send",
        "--file",
        "-",
        stdin='{"request_id":"stdin-1","user_id":"carol","timestamp":1764000000002}',
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    bad_file = xsp(xsp_settings, "send", "--file", "-", stdin='{"user_id":"x"}')
    assert bad_file.returncode == 2
    assert "request_id is required" in bad_file.stderr

    messages = asyncio.run(
        read_topic(xsp_settings.bootstrap_servers, names.ad_requests, expected=6)
    )
    requests = [decode(AdRequest, m.value or b"") for m in messages]
    assert sorted(r.user_id for r in requests) == ["alice"] * 3 + ["bob", "bob", "carol"]
    assert {r.campaign_hint for r in requests if r.user_id == "alice"} == {"camp-9"}
    assert {m.key for m in messages if m.key != b"alice"} == {b"bob", b"carol"}


def test_demo_command_decides_everything_within_budget(tmp_path: Path) -> None:
    """The README's demo: its own broker, ad server, worker, traffic and a JSON summary."""
    result = subprocess.run(
        [sys.executable, "-m", "streams", "dev", "--json", "--duration", "6", "--rate", "50"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["complete"] is True
    assert summary["decided"] == summary["sent_valid"] == 300
    assert summary["dead_lettered"] == summary["sent_invalid"] > 0
    assert summary["by_status"]["filled"] > 0
    for campaign in summary["campaigns"]:
        assert campaign["spend_micros"] <= campaign["budget_micros"]


def test_worker_start_creates_the_changelogs_before_faust_does(xsp_settings: Settings) -> None:
    """Compacted, with every partition led, before the worker's consumer reads metadata."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.app import create_app
    from streams.cli import _ensure_topics

    app = create_app(xsp_settings, register_agents=False)
    changelogs = app.xsp_tables.changelog_topics()
    assert changelogs == [
        f"{xsp_settings.app_id}-frequency-changelog",
        f"{xsp_settings.app_id}-budget-changelog",
    ]
    _ensure_topics(app)

    async def describe() -> tuple[list[dict], list[object]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=xsp_settings.bootstrap_servers)
        await admin.start()
        try:
            topics = await admin.describe_topics(changelogs)
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in changelogs]
            )
            return topics, configs
        finally:
            await admin.close()

    topics, configs = asyncio.run(describe())
    for topic in topics:
        assert topic["error_code"] == 0, topic
        assert len(topic["partitions"]) == xsp_settings.partitions
        assert all(p["leader"] >= 0 for p in topic["partitions"])
    policies = {
        resource[3]: value  # (error, message, type, name, entries)
        for response in configs
        for resource in response.resources  # type: ignore[attr-defined]
        for name, value, *_ in resource[4]
        if name == "cleanup.policy"
    }
    assert policies == dict.fromkeys(changelogs, "compact"), policies
