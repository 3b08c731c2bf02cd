"""The producer buffer's limit by processing guarantee (streams/faust_transport.py says why)."""

from __future__ import annotations

import pytest
from faust.transport.producer import ProducerBuffer

from agents.admit import BATCH_EVENTS
from streams.app import create_app
from streams.faust_transport import PRODUCER_BUFFER_MAX_MESSAGES
from streams.settings import Settings


@pytest.mark.parametrize(
    ("guarantee", "limit"),
    [
        # One admit batch writes up to 1,000 rows: it must not trip the limit.
        ("at_least_once", PRODUCER_BUFFER_MAX_MESSAGES),
        # A commit drains the buffer while holding the commit gate: keep it short.
        ("exactly_once", ProducerBuffer.max_messages),
    ],
)
def test_the_buffer_limit_follows_the_guarantee(guarantee: str, limit: int) -> None:
    app = create_app(Settings(processing_guarantee=guarantee), register_agents=False)
    assert app.producer.buffer.max_messages == limit
    # Two rows per admitted request (the user's row and the request's record).
    assert PRODUCER_BUFFER_MAX_MESSAGES >= 2 * BATCH_EVENTS > ProducerBuffer.max_messages
