"""A bad argument prints one line and exits 2 — never a traceback (no broker needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_xsp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XSP_BOOTSTRAP_SERVERS": "127.0.0.1:1", **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("nosuchcommand",), None, "No such command 'nosuchcommand'"),
        (("kafka", "explode"), None, "'explode' is not one of"),
        (("send", "--count", "zero"), None, "'zero' is not a valid integer range"),
        (("send", "--count", "0"), None, "--count"),
        (("send", "--request-id", "a", "--count", "2"), None, "--request-id names one request"),
        (("topics", "create", "--partitions", "-1"), None, "--partitions"),
        (("topics", "list"), {"XSP_PARTITIONS": "lots"}, "XSP_PARTITIONS must be int"),
        (("send", "--file", "/no/such/file.json"), None, "/no/such/file.json"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    args: tuple[str, ...], env: dict[str, str] | None, needle: str
) -> None:
    result = run_xsp(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("xsp: error:")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_broker_is_a_clear_one_line_failure() -> None:
    result = run_xsp("send")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "xsp: error: no Kafka broker answers at 127.0.0.1:1 "
        "(start one with `xsp kafka start` and set XSP_BOOTSTRAP_SERVERS)"
    ]


@pytest.mark.parametrize("command", ["kafka", "topics", "send", "dev", "worker"])
def test_every_command_has_help(command: str) -> None:
    result = run_xsp(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: xsp " + command in result.stdout
