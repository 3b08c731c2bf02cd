"""Faust's stream, iterated in Python so that every ack reaches xsp's consumer.

faust-streaming ships a Cython stream iterator (``faust._cython.streams``)
and uses it whenever the extension is installed, as it is in the wheel.
That iterator inlines ``Consumer.ack``: it writes the consumer's acked
offsets itself and never calls the consumer's ``ack`` method. xsp's
consumer refuses the acks of messages a stream skips or finishes while a
rebalance is under way (``streams/faust_transport.py``, ``_Consumer.ack``),
so that the new owner reads them again instead of a commit passing them.
Under the Cython iterator that rule held only for agents that take batches
(their acks go through ``Stream.ack``), not for agents that iterate one
event at a time (budget, spend, campaigns): an in-process test found a
message processed while partitions were being revoked counted as done.
The Python iterator calls ``event.ack()``, which calls the consumer's
``ack``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import faust

__all__ = ["Stream"]


class Stream(faust.Stream):
    """``faust.Stream`` that always uses its Python iterator."""

    def __aiter__(self) -> AsyncIterator[Any]:
        iterator = self._py_aiter()
        # As faust.Stream.__aiter__: on_stop() closes iterators a caller abandoned.
        self._active_agens.add(cast(Any, iterator))
        return iterator
