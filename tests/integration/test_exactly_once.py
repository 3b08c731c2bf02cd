"""Exactly-once workers keep committing after a rebalance.

Under ``exactly_once`` the budget agent's cap releases reach ``ad-requests``
in transactions, so a partition's log there is records and commit markers.
A consumer commits one past the last record it processed, which is often
the offset of the marker that closed that record's transaction. After a
rebalance Faust seeks each partition to its committed offset, and its fetch
loop, which reported offsets without a record, took that offset as already
read: a marker sitting there was never counted, the commit stopped at it for
good, and the commit guard's rebalances only sought back to the same place.
Such offsets now come from aiokafka's positions. This test puts every
partition's commit on a marker, makes the group rebalance, and checks that
the commits reach the end of the log again.
"""

from __future__ import annotations

import time

from streams.records import AdRequest, DecisionStatus
from tests.conftest import Stack
from tests.integration.test_chaos import assert_commits_catch_up
from tests.integration.test_money import (
    admitted_batch_partitions,
    await_decisions,
    campaign,
    send_requests,
)


def _requests(prefix: str, count: int) -> list[AdRequest]:
    now = int(time.time() * 1000)
    return [
        AdRequest(request_id=f"{prefix}-{i}", user_id=f"viewer-{i}", timestamp=now + i)
        for i in range(count)
    ]


def test_exactly_once_commits_pass_transaction_markers_after_a_rebalance(
    xsp_stack: Stack,
) -> None:
    stack = xsp_stack
    stack.settings = stack.settings.with_overrides(processing_guarantee="exactly_once")
    # No fill: every request ends with a cap release sent into ad-requests in a transaction.
    stack.put_campaigns([campaign(stack, "eos-empty", vast_url=f"{stack.ad_server}/empty")])
    stack.start_worker()
    before = _requests("before", 200)
    send_requests(stack, before)
    decided = await_decisions(stack, {r.request_id for r in before}, timeout_s=120)
    assert {copies[0].status for copies in decided.values()} == {DecisionStatus.NO_FILL}
    # An envelope travels in its requests' partition's transaction: one partition each.
    spans = admitted_batch_partitions(stack)
    assert spans and all(len(span) == 1 for span in spans), spans
    # The releases are the last records of every ad-requests partition: wait for the
    # workers to commit them, so each partition's committed offset is a marker's.
    time.sleep(8)

    stack.start_worker()  # a rebalance: every partition is sought to its committed offset
    after = _requests("after", 200)
    send_requests(stack, after)
    await_decisions(stack, {r.request_id for r in after}, timeout_s=240)
    assert_commits_catch_up(stack, timeout_s=120)
