"""An in-memory cache of working-grid features, so solver-only re-runs skip feature extraction.

Entries are keyed by a digest of the image content and geometry, the grid, the initial
translation, the feature extractor's cache key and the device, so a key can only match when the
features would be identical. Least recently used entries are dropped beyond ``max_items``.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Callable, Hashable, Optional

import numpy as np
import SimpleITK as sitk
import torch


def image_digest(image: sitk.Image) -> str:
    """A content digest of an image's voxels and geometry (BLAKE2b, 128 bit)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetPixelIDValue())).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).data)
    return h.hexdigest()


class FeatureCache:
    """Least-recently-used cache of feature tensors.

    Pass the same instance to successive :func:`voxelopt.register` calls. ``hits`` and
    ``misses`` count lookups.
    """

    def __init__(self, max_items: int = 4):
        self.max_items = int(max_items)
        self._items: "collections.OrderedDict[Hashable, torch.Tensor]" = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = compute()
        self._items[key] = value
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def cached(cache: Optional[FeatureCache], key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` through ``cache`` when one is given."""
    return compute() if cache is None else cache.get_or_compute(key, compute)
