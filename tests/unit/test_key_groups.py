"""GroupedDict: scans by group give what a full filtered pass gives, through every write path."""

from __future__ import annotations

import random

import pytest

from streams.key_groups import GroupedDict

SEP = b"\x1f"


def brute(d: dict[bytes, object], prefix: bytes) -> list[bytes]:
    return sorted(k for k in d if k.startswith(prefix))


def random_key(rng: random.Random) -> bytes:
    kind = rng.choice([b"p:", b"r:", b"c:"])
    row = rng.choice([b"c:camp-a", b"c:camp-b", b"c:camp-ab", b"u:x"])
    rid = str(rng.randrange(40)).encode()
    return kind + row + SEP + rid if kind != b"c:" else kind + row[2:]


@pytest.mark.parametrize("seed", range(5))
def test_scans_match_a_full_pass_after_random_writes(seed: int) -> None:
    rng = random.Random(seed)
    grouped = GroupedDict((b"p:",), SEP)
    plain: dict[bytes, object] = {}
    for _ in range(3000):
        key = random_key(rng)
        op = rng.randrange(7)
        if op == 0:
            grouped[key] = plain[key] = rng.random()
        elif op == 1 and key in plain:
            del grouped[key], plain[key]
        elif op == 2:
            assert grouped.pop(key, None) == plain.pop(key, None)
        elif op == 3:
            batch = [(random_key(rng), rng.random()) for _ in range(5)]
            grouped.update(batch)  # how Faust's memory store applies a changelog batch
            plain.update(batch)
        elif op == 4:
            assert grouped.setdefault(key, 1) == plain.setdefault(key, 1)
        elif op == 5 and plain and rng.random() < 0.05:
            key, value = grouped.popitem()
            assert plain.pop(key) == value
        elif op == 6 and rng.random() < 0.002:
            grouped.clear()
            plain.clear()
        else:
            grouped[key] = plain[key] = 0
    assert dict(grouped) == plain
    for prefix in (
        b"p:c:camp-a" + SEP,  # one campaign's reservations (the budget tick's scan)
        b"p:c:camp-a",  # a prefix of two campaigns' groups
        b"p:",  # every reservation key (pruning)
        b"p:c:camp-b" + SEP + b"1",  # inside a group
        b"r:",  # not indexed: a full pass
        b"c:",
    ):
        assert sorted(grouped.scan(prefix)) == brute(plain, prefix), prefix


def test_groups_do_not_outlive_their_keys() -> None:
    grouped = GroupedDict((b"p:",), SEP)
    grouped[b"p:c:a" + SEP + b"1"] = 1
    del grouped[b"p:c:a" + SEP + b"1"]
    assert grouped._groups == {}
    with pytest.raises(KeyError):
        grouped.pop(b"p:c:a" + SEP + b"1")


def test_a_scan_is_a_snapshot() -> None:
    grouped = GroupedDict((b"p:",), SEP)
    for i in range(3):
        grouped[b"p:c:a" + SEP + str(i).encode()] = i
    for key in grouped.scan(b"p:c:a" + SEP):
        del grouped[key]  # deleting while scanning is safe
    assert not grouped
