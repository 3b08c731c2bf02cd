"""streams.commit_gate: a commit never falls between an event's table rows and its outputs."""

from __future__ import annotations

import asyncio

from streams.commit_gate import CommitGate


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_commit_waits_for_the_event_it_would_have_split() -> None:
    async def scenario() -> list[str]:
        gate = CommitGate()
        sent: list[str] = []
        committed: list[str] = []

        async def event() -> None:
            async with gate.event():
                sent.append("table row")  # buffered, sent a few turns later
                await _turns(5)
                sent.append("output")

        async def commit() -> None:
            await _turns(2)  # starts while the event is half done
            async with gate.commit():
                committed.extend(sent)

        await asyncio.gather(event(), commit())
        return committed

    assert asyncio.run(scenario()) == ["table row", "output"]


def test_an_event_waits_for_the_commit_in_progress() -> None:
    async def scenario() -> list[str]:
        gate = CommitGate()
        order: list[str] = []

        async def commit() -> None:
            async with gate.commit():
                order.append("commit starts")
                await _turns(5)
                order.append("commit ends")

        async def event() -> None:
            await _turns(1)
            async with gate.event():
                order.append("event")

        await asyncio.gather(commit(), event())
        return order

    assert asyncio.run(scenario()) == ["commit starts", "commit ends", "event"]


def test_events_back_to_back_do_not_starve_a_commit_and_never_overlap_one() -> None:
    async def scenario() -> tuple[int, int, list[str]]:
        gate = CommitGate()
        committing = False
        overlaps: list[str] = []
        events_done = 0
        commits_done = 0

        async def events(name: str) -> None:
            nonlocal events_done
            for _ in range(200):
                async with gate.event():
                    if committing:
                        overlaps.append(name)
                    await _turns(1)
                    if committing:
                        overlaps.append(name)
                events_done += 1

        async def commits() -> None:
            nonlocal committing, commits_done
            for _ in range(20):
                async with gate.commit():
                    committing = True
                    await _turns(2)
                    committing = False
                commits_done += 1

        # Two commit loops queue on each other: the gate reopens between them.
        await asyncio.wait_for(
            asyncio.gather(events("a"), events("b"), commits(), commits()), timeout=10
        )
        return events_done, commits_done, overlaps

    events_done, commits_done, overlaps = asyncio.run(scenario())
    assert (events_done, commits_done, overlaps) == (400, 40, [])


def test_an_event_woken_by_one_commit_does_not_slip_into_the_next() -> None:
    async def scenario() -> list[str]:
        gate = CommitGate()
        committing = False
        seen: list[str] = []

        async def commits() -> None:
            nonlocal committing
            # The second commit begins in the same loop turn as the first ends,
            # before the woken event has run.
            for _ in range(2):
                async with gate.commit():
                    committing = True
                    await _turns(3)
                    committing = False

        async def event() -> None:
            await _turns(1)
            async with gate.event():
                seen.append("during a commit" if committing else "between commits")

        await asyncio.gather(commits(), event())
        return seen

    assert asyncio.run(scenario()) == ["between commits"]


def test_each_commit_reports_its_wait_for_events_and_how_long_it_held_them_back() -> None:
    async def scenario() -> list[tuple[float, float]]:
        reports: list[tuple[float, float]] = []
        gate = CommitGate(on_commit=lambda waited, held: reports.append((waited, held)))

        async def event() -> None:
            async with gate.event():
                await asyncio.sleep(0.05)

        async def commit(after_s: float, takes_s: float) -> None:
            await asyncio.sleep(after_s)
            async with gate.commit():
                await asyncio.sleep(takes_s)

        await asyncio.gather(event(), commit(0.01, 0.02))  # waits ~40 ms for the event
        await commit(0, 0.03)  # nothing to wait for
        return reports

    (waited_1, held_1), (waited_2, held_2) = asyncio.run(scenario())
    # Lower bounds only, as sleeps guarantee them; "nothing to wait for" is ~1 µs.
    assert waited_1 >= 0.03 and held_1 >= waited_1 + 0.02
    assert waited_2 < 0.03 and held_2 >= 0.03
