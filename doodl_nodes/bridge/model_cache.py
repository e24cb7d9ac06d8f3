"""A small process-wide cache of loaded scorer models, ordered by last use.

ComfyUI keeps node *instances* only while their node is in the current graph: a prompt without the
node drops the instance (and any model cached on it). Alternating workflows would then reload the
scorer's model every time. This cache outlives node instances; it holds at most ``capacity`` models
(ComfyUI loads and offloads them like its own models, see ``scorer_models.py``) and evicts the
least recently used.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

__all__ = ["SharedModelCache", "SHARED_MODELS"]


class SharedModelCache:
    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: "OrderedDict[Hashable, object]" = OrderedDict()
        self.loads = 0

    def get(self, key: Hashable, load: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        self.loads += 1
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


SHARED_MODELS = SharedModelCache()
