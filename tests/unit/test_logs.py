"""streams.logs: one JSON object per line, request_id on every line about a request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from streams.logs import configure_logging, logging_config, request_logger


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_have_core_fields_and_extras() -> None:
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    log = logging.getLogger("xsp.test")
    log.info("hello %s", "world", extra={"campaign_id": "c-1", "obj": object()})
    log.debug("not shown at info")
    log.warning("multi\nline message")

    lines = lines_of(out)
    assert len(lines) == 2  # the debug line is filtered, the newline stays inside the JSON
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "hello world"
    assert first["level"] == "info"
    assert first["logger"] == "xsp.test"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert first["campaign_id"] == "c-1"
    assert first["obj"].startswith("<object object")  # unencodable values become str
    assert second["message"] == "multi\nline message"
    assert second["level"] == "warning"


@pytest.mark.usefixtures("restore_logging")
def test_request_logger_puts_request_id_on_every_line_and_merges_extras() -> None:
    out = io.StringIO()
    configure_logging("debug", json=True, stream=out)
    log = request_logger(logging.getLogger("xsp.resolve"), "req-42", campaign_id="c-9")
    log.debug("resolving")
    log.info("hop done", extra={"hop": 1})
    try:
        raise ValueError("bad VAST")
    except ValueError:
        log.exception("failed")
    logging.getLogger("xsp.other").info("not about a request")

    docs = [json.loads(line) for line in lines_of(out)]
    assert len(docs) == 4
    about_request, unrelated = docs[:3], docs[3]
    assert all(d["request_id"] == "req-42" for d in about_request)
    assert all(d["campaign_id"] == "c-9" for d in about_request)
    assert about_request[1]["hop"] == 1  # the call's extra is merged, not dropped
    assert "ValueError: bad VAST" in about_request[2]["exc"]
    assert "request_id" not in unrelated
    # request_id comes right after the core fields, where a reader looks.
    assert list(about_request[0])[:5] == ["ts", "level", "logger", "message", "request_id"]


@pytest.mark.usefixtures("restore_logging")
def test_text_format_shows_request_id_and_configuring_twice_does_not_double_lines() -> None:
    out = io.StringIO()
    configure_logging("info", json=False, stream=out)
    configure_logging("info", json=False, stream=out)
    request_logger("xsp.settle", "req-7").info("decision published")
    lines = lines_of(out)
    assert len(lines) == 1
    assert lines[0].endswith("INFO xsp.settle: decision published request_id=req-7")


@pytest.mark.usefixtures("restore_logging")
def test_an_extra_named_like_a_core_field_does_not_overwrite_it() -> None:
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    logging.getLogger("xsp.x").info("real", extra={"level": "fake"})
    doc = json.loads(lines_of(out)[0])
    assert doc["level"] == "info"
    assert doc["extra_level"] == "fake"


def test_unknown_level_is_refused_and_config_is_dictconfig_shaped() -> None:
    with pytest.raises(ValueError, match="log level"):
        logging_config("loud")
    config = logging_config("warn", json=True)
    assert config["root"]["level"] == "WARNING"
    assert config["formatters"]["xsp"]["()"] == "streams.logs.JsonFormatter"
