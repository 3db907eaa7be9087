"""Caches bounded by a budget of bytes or entries, evicting the least recently used first.

    factors = LRU("factors", max_bytes=768 * 2**20)
    usv = factors.get(name) or factors.put(name, transforms.svd(w))   # evicts to stay within 768 MiB

Every cache a long-lived process keeps (the explorer's, the app's) is one of these, so that a
server left running holds at most its stated budgets, whatever its users ask for. Whatever is
evicted is computed again when next asked for. The bytes of an entry are measured (`nbytes`):
a tensor's `numel * element_size`, and for plain Python values `sys.getsizeof` over what they
hold.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


def nbytes(value, _seen: set | None = None) -> int:
    """The bytes `value` holds: each tensor's numel * element_size (a tensor met twice counted
    once), and for dicts, lists, tuples, sets, dataclasses and other objects with a __dict__
    their own sys.getsizeof plus what they hold; strings and numbers their sys.getsizeof.

    >>> nbytes(torch.zeros(3, 4))   # 12 float32 values
    48
    >>> t = torch.zeros(10, dtype=torch.float16)
    >>> nbytes([t, t]) == 20 + sys.getsizeof([t, t])   # the same tensor twice: counted once
    True
    """
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return sys.getsizeof(value)
    own = sys.getsizeof(value)
    if isinstance(value, dict):
        return own + sum(nbytes(k, seen) + nbytes(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return own + sum(nbytes(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return own + sum(nbytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if hasattr(value, "__dict__"):
        return own + nbytes(vars(value), seen)
    return own


def tensors(value, _seen: set | None = None):
    """Every tensor `value` holds, walked as `nbytes` walks it (each object once)."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors(v, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from tensors(v, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from tensors(getattr(value, f.name), seen)


def tensor_bytes(value) -> int:
    """The bytes of the tensors `value` holds (`tensors`), numel * element_size each, nothing else."""
    return sum(t.numel() * t.element_size() for t in tensors(value))


class LRU:
    """A map within a budget: at most `max_entries` entries and `max_bytes` bytes (None: no limit
    of that kind), each entry's bytes measured by `size` (default `nbytes`) when put. Putting
    evicts the least recently used entries (a `get` or `put` makes an entry the most recent)
    until both limits hold; an entry larger than `max_bytes` on its own is returned but not kept.
    Safe to use from several threads. `evicted` counts the entries evicted so far.

    >>> c = LRU("demo", max_entries=2)
    >>> c.put("a", 1), c.put("b", 2), c.get("a"), c.put("c", 3)   # put returns what it keeps
    (1, 2, 1, 3)
    >>> c.keys(), c.evicted   # "b" was the least recently used
    (['a', 'c'], 1)
    """

    def __init__(self, name: str, max_bytes: int | None = None, max_entries: int | None = None,
                 size: Callable[[object], int] = nbytes):
        self.name, self.max_bytes, self.max_entries, self.size = name, max_bytes, max_entries, size
        self._d: OrderedDict = OrderedDict()  # key -> (value, bytes), least recently used first
        self._bytes = 0
        self.evicted = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, default=None):
        with self._lock:
            if key not in self._d:
                return default
            self._d.move_to_end(key)
            return self._d[key][0]

    def put(self, key: Hashable, value, size: int | None = None):
        """Keep `value` under `key` (its bytes `size`, measured when not given) and return it."""
        size = self.size(value) if size is None else size
        with self._lock:
            if key in self._d:
                self._bytes -= self._d.pop(key)[1]
            if self.max_bytes is not None and size > self.max_bytes:
                return value  # alone over the budget: computed again when next asked for
            self._d[key] = (value, size)
            self._bytes += size
            while self._d and ((self.max_entries is not None and len(self._d) > self.max_entries)
                               or (self.max_bytes is not None and self._bytes > self.max_bytes)):
                self._bytes -= self._d.popitem(last=False)[1][1]
                self.evicted += 1
        return value

    def get_or_put(self, key: Hashable, make: Callable[[], object]):
        """The value under `key`, or `make()` kept under it (made outside the lock: two threads
        asking at once may both make it; the last one made is kept)."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key][0]
        return self.put(key, make())

    def room(self, size: int) -> bool:
        """Whether an entry of `size` bytes fits beside those held without evicting any."""
        with self._lock:
            return ((self.max_bytes is None or self._bytes + size <= self.max_bytes)
                    and (self.max_entries is None or len(self._d) < self.max_entries))

    def pop(self, key: Hashable, default=None):
        with self._lock:
            if key not in self._d:
                return default
            value, size = self._d.pop(key)
            self._bytes -= size
            return value

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        """The bytes of the entries held (as measured when each was put)."""
        return self._bytes

    def __contains__(self, key) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def keys(self) -> list:
        with self._lock:
            return list(self._d)

    def values(self) -> list:
        with self._lock:
            return [v for v, _ in self._d.values()]

    def __repr__(self) -> str:
        return (f"LRU({self.name!r}: {len(self._d)} entries, {self._bytes:,} bytes; budget "
                f"{self.max_entries} entries, {self.max_bytes} bytes)")
