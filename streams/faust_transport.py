"""Faust's aiokafka transport with the consumer's fetch wait made configurable.

faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for worker consumers.
On a lightly loaded topic every hop then waits up to 1.5 s for a fetch to
fill, so a three-stage chain took seconds per request. We keep Faust's
consumer as it is and only lower that one number after it is built
(``XSP_CONSUMER_FETCH_MAX_WAIT_MS``, default 10 ms, read from the app's
``xsp_settings``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["Transport"]

_FAUST_DEFAULT_FETCH_MAX_WAIT_MS = 1500


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its Fetcher in start().
        settings = getattr(self.app, "xsp_settings", None)
        consumer._fetch_max_wait_ms = (
            settings.consumer_fetch_max_wait_ms
            if settings is not None
            else _FAUST_DEFAULT_FETCH_MAX_WAIT_MS
        )
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport whose worker consumer uses a short fetch wait."""

    Consumer: ClassVar[Any] = _Consumer
