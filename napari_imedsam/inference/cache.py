"""A least-recently-used store of image embeddings under a memory budget."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
import torch


def content_key(image: np.ndarray) -> str:
    """A key from the pixels themselves (shape, dtype and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((image.shape, str(image.dtype))).encode())
    # The array's own buffer (a bytes copy of a 12000 x 12000 RGB image was 432 MB more).
    digest.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings by key, evicting the least recently used beyond ``max_bytes``.

    Thread-safe: the napari widget precomputes slices in a worker thread while
    the main thread reads.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(t.element_size() * t.numel() for t in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            total = sum(t.element_size() * t.numel() for t in self._items.values())
            # Keep at least the newest entry, even if it alone exceeds the budget.
            while total > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                total -= old.element_size() * old.numel()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
