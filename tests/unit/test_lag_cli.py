"""`xsp lag` without a broker: argument errors, the table, the JSON document."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from streams.lag import PartitionLag, lag_command, lag_document, render_lag_table

ROWS = [
    PartitionLag("xsp.ad-requests", 0, 120, 100, 20),
    PartitionLag("xsp.ad-requests", 1, 7, None, 7),
    PartitionLag("xsp.spend", 0, 5, 5, 0),
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "1"], "--interval needs --watch"),
        (["--count", "2"], "--count needs --watch"),
        (["--watch", "--interval", "0"], "not in the range x>=0.1"),
        (["--watch", "--interval", "soon"], "'soon' is not a valid float"),
        (["--watch", "--count", "0"], "not in the range x>=1"),
        (["--group", " "], "--group must not be empty"),
        (["--topic", ""], "--topic must not be empty"),
        (["--bootstrap", ""], "--bootstrap must not be empty"),
        (["--bogus"], "No such option: --bogus"),
    ],
)
def test_bad_arguments_are_usage_errors_before_any_connection(
    args: list[str], message: str
) -> None:
    # --bootstrap points nowhere: reaching the broker would be a different error.
    result = CliRunner().invoke(lag_command, ["--bootstrap", "127.0.0.1:1", *args])
    assert result.exit_code == 2
    assert "Usage:" in result.output
    assert message in result.output


def test_unreachable_broker_is_one_line_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        result = CliRunner().invoke(lag_command, ["--bootstrap", f"127.0.0.1:{port}", "--json"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: cannot reach Kafka at 127.0.0.1:{port} (KafkaConnectionError)"
    ]


def test_malformed_environment_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSP_PARTITIONS", "many")
    result = CliRunner().invoke(lag_command, [])
    assert result.exit_code == 2
    assert "XSP_PARTITIONS must be int" in result.output


def test_table_has_a_line_per_partition_totals_per_topic_and_a_grand_total() -> None:
    text = render_lag_table(ROWS, "xsp")
    lines = text.splitlines()
    assert lines[0] == "consumer group xsp"
    assert lines[1].split() == ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]
    cells = [line.split() for line in lines[2:]]
    assert cells == [
        ["xsp.ad-requests", "0", "100", "120", "20"],
        ["xsp.ad-requests", "1", "-", "7", "7"],
        ["total", "27"],
        ["xsp.spend", "0", "5", "5", "0"],
        ["total", "0"],
        ["TOTAL", "27"],
    ]
    # Numbers are right-aligned: every LAG cell ends in the same column.
    assert len({len(line) for line in lines[1:]}) == 1


def test_empty_table_explains_itself() -> None:
    assert "no committed offsets" in render_lag_table([], "g")


def test_json_document_totals_agree() -> None:
    doc = lag_document("xsp", ROWS)
    assert doc["group"] == "xsp"
    assert doc["topics"] == {"xsp.ad-requests": 27, "xsp.spend": 0}
    assert doc["total_lag"] == 27
    assert doc["partitions"][1] == {
        "topic": "xsp.ad-requests",
        "partition": 1,
        "end_offset": 7,
        "committed": None,
        "lag": 7,
    }
