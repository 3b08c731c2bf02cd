"""Faust's web router with key → partition computed locally.

Faust's ``table_route`` finds a key's partition through the worker
producer's cluster metadata. aiokafka narrows that metadata to the topics
the producer has sent to lately, and after the first send to a new topic
(an edge's new reply topic) the table changelog topics can drop out of it:
every routed query then failed with HTTP 500 until the table was written
again. The partition of a key needs no metadata — it is Kafka's default
partitioner (murmur2) over the partition count we configured — so this
router computes it and asks the assignor only which worker owns it.
"""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import murmur2
from faust.app.router import Router as FaustRouter
from faust.types import TP
from faust.web.exceptions import ServiceUnavailable
from yarl import URL

__all__ = ["Router", "partition_of"]


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (as the producer does)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Router(FaustRouter):
    """``key_store`` without producer metadata (see the module docstring)."""

    def key_store(self, table_name: str, key: Any) -> URL:
        table = self._get_table(table_name)
        topic = self._get_table_topic(table)
        serialized = self._get_serialized_key(table, key)
        partitions = table.partitions or self.app.conf.topic_partitions
        tp = TP(topic, partition_of(serialized, partitions))
        try:
            return URL(self._assignor._tps_url[tp])  # type: ignore[attr-defined]
        except KeyError:
            raise ServiceUnavailable() from None
