"""A dict that also knows some of its keys by group: prefix scans without a full pass.

Faust's ``memory://`` store keeps one dict for all partitions of a table, so a
prefix scan had to filter every key: 43 ms per 200,000 keys, and the budget
agent scans a campaign's reservation keys on every tick while it has
reservations in flight. ``GroupedDict`` replaces that store's dict; every way
Faust writes to it (agent writes, changelog recovery, standby updates) goes
through the methods below, so the groups stay exact. No Faust import here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["GroupedDict"]

_MISSING = object()


class GroupedDict(dict[bytes, Any]):
    """A ``dict`` of bytes keys that lists the keys of each group in insertion order.

    A key belongs to a group when it starts with one of ``kinds``: its group is
    the key up to and including the first ``sep`` (a key without ``sep`` is
    its own group). Guarantees: :meth:`scan` yields exactly the keys a full
    pass filtering by ``startswith(prefix)`` would, for any prefix that starts
    with an indexed kind; other prefixes fall back to that full pass.
    """

    def __init__(self, kinds: Iterable[bytes], sep: bytes) -> None:
        super().__init__()
        self.kinds = tuple(kinds)
        self.sep = sep
        self._groups: dict[bytes, dict[bytes, None]] = {}

    def _group(self, key: bytes) -> bytes | None:
        if not key.startswith(self.kinds):
            return None
        cut = key.find(self.sep)
        return key if cut < 0 else key[: cut + 1]

    def _add(self, key: bytes) -> None:
        group = self._group(key)
        if group is not None:
            self._groups.setdefault(group, {})[key] = None

    def _discard(self, key: bytes) -> None:
        group = self._group(key)
        members = self._groups.get(group) if group is not None else None
        if members is not None:
            members.pop(key, None)
            if not members:
                del self._groups[group]  # type: ignore[arg-type]

    def __setitem__(self, key: bytes, value: Any) -> None:
        super().__setitem__(key, value)
        self._add(key)

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self._discard(key)

    def pop(self, key: bytes, default: Any = _MISSING) -> Any:
        if key in self:
            self._discard(key)
            return super().pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[bytes, Any]:
        key, value = super().popitem()
        self._discard(key)
        return key, value

    def setdefault(self, key: bytes, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for source in (*args, kwargs):
            items = source.items() if isinstance(source, Mapping) else source
            for key, value in items:
                self[key] = value

    def clear(self) -> None:
        super().clear()
        self._groups.clear()

    def scan(self, prefix: bytes) -> Iterator[bytes]:
        """The keys starting with ``prefix`` (a snapshot: the dict may change meanwhile)."""
        if not prefix.startswith(self.kinds):
            return iter([k for k in self if k.startswith(prefix)])
        cut = prefix.find(self.sep)
        if cut >= 0:
            members = self._groups.get(prefix[: cut + 1], {})
            return iter([k for k in members if k.startswith(prefix)])
        return iter(
            [
                k
                for group, members in self._groups.items()
                if group.startswith(prefix) or prefix.startswith(group)
                for k in members
                if k.startswith(prefix)
            ]
        )
