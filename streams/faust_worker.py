"""Faust's worker without its terminal spinner.

At ``--loglevel warn`` or ``error`` faust.Worker installs a progress spinner
that spins on every log record: it sets the root logger to DEBUG and adds a
handler for it. Every ``log.debug`` in aiokafka and Faust then builds a
LogRecord that no handler prints: a py-spy profile of a worker at
100 requests/s found 10 % of the main thread there. xsp prints its own
progress, so the spinner is never installed and the root logger keeps the
level of ``XSP_LOG_LEVEL``.
"""

from __future__ import annotations

from typing import Any

import faust

__all__ = ["Worker"]


class Worker(faust.Worker):
    """``faust.Worker`` whose root logger stays at the configured level."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's root-logger setup (at start) installs the spinner only if there is one.
        self.spinner = None
