"""The project's own Kafka launcher: start, answer, stop, restart with data intact."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from streams.kafka_io import create_topics, produce, read_topic
from streams.kafka_local import LocalKafka, broker_answers


def test_start_stop_restart_keeps_data(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka")
    first = broker.start()
    try:
        assert broker_answers(first.bootstrap_servers)
        asyncio.run(create_topics(first.bootstrap_servers, ["durable"], partitions=1))
        asyncio.run(produce(first.bootstrap_servers, "durable", [(b"k", b"before restart")]))
    finally:
        broker.stop()
    assert not broker_answers(first.bootstrap_servers, timeout_s=1.0)

    second = broker.start()
    try:
        assert second.bootstrap_servers == first.bootstrap_servers
        messages = asyncio.run(read_topic(second.bootstrap_servers, "durable", expected=1))
        assert [m.value for m in messages] == [b"before restart"]
    finally:
        broker.stop()


def test_attached_broker_dies_with_its_parent(tmp_path: Path) -> None:
    """A killed test run must not leave a broker behind (PR_SET_PDEATHSIG)."""
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from streams.kafka_local import LocalKafka\n"
        f"info = LocalKafka(Path({str(tmp_path / 'k')!r})).start()\n"
        "print(json.dumps({'pid': info.pid, 'bootstrap': info.bootstrap_servers}), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        info = json.loads(parent.stdout.readline())
        assert broker_answers(info["bootstrap"])
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(info["pid"]):
        time.sleep(0.2)
    assert not _alive(info["pid"]), "the broker outlived the process that started it"


def test_cli_start_status_stop(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "cli-kafka")

    def xsp(*args: str) -> dict[str, object]:
        result = subprocess.run(
            [sys.executable, "-m", "streams", "kafka", *args, "--data-dir", data_dir, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return dict(json.loads(result.stdout))

    started = xsp("start")
    try:
        assert started["running"] is True
        assert broker_answers(str(started["bootstrap_servers"]))
        status = xsp("status")
        assert status["running"] is True
        assert status["pid"] == started["pid"]
    finally:
        stopped = xsp("stop")
    assert stopped == {"stopped": True}
    assert xsp("status")["running"] is False
    assert not _alive(int(str(started["pid"])))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
