"""The worker keeps the root logger at the configured level (no Faust spinner)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from streams.app import create_app
from streams.faust_worker import Worker
from streams.settings import Settings


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers = handlers


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR])
def test_quiet_levels_leave_debug_records_unbuilt(root_logger: logging.Logger, level: int) -> None:
    app = create_app(Settings(), register_agents=False)
    assert app.conf.Worker is Worker
    worker = Worker(app, loglevel=logging.getLevelName(level).lower(), quiet=True)
    root_logger.setLevel(level)

    worker.on_setup_root_logger(root_logger, level)

    # faust.Worker would set the root to DEBUG and add its SpinnerHandler here.
    assert root_logger.level == level
    assert not [h for h in root_logger.handlers if type(h).__name__ == "SpinnerHandler"]
    assert not logging.getLogger("aiokafka").isEnabledFor(logging.DEBUG)
