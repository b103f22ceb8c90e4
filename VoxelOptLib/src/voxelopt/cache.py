"""A cache of working-grid features, so solver-only re-runs skip feature extraction.

Entries are keyed by a digest of the image content and geometry, the grid, the initial
translation, the feature extractor's cache key and the device, so a key can only match when the
features would be identical. In memory, least recently used entries are dropped beyond
``max_items``. With a ``directory`` every entry is also kept on disk (one ``.pt`` file holding a
plain tensor, read back with ``weights_only=True``), so features survive between processes.
"""

from __future__ import annotations

import collections
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, Optional, Union

import torch

from .digest import ConstantImages

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk


class FeatureCache:
    """Least-recently-used cache of feature tensors, optionally backed by a directory.

    Pass the same instance to successive :func:`voxelopt.register` calls. ``hits`` counts
    lookups answered from memory or disk (``disk_hits`` those from disk), ``misses`` the
    computations. Every lookup is keyed by the content digest of the images involved; a caller
    that hands the same unchanging image objects to successive calls can say so with
    :meth:`mark_constant`, and their digests are then computed once.
    """

    def __init__(self, max_items: int = 4, directory: Optional[Union[str, "os.PathLike[str]"]] = None):
        self.max_items = int(max_items)
        self.directory = Path(directory) if directory is not None else None
        self._items: "collections.OrderedDict[Hashable, torch.Tensor]" = collections.OrderedDict()
        self._values: Dict[Hashable, Any] = {}
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0
        #: Images promised not to change (see :meth:`mark_constant`), with their digests.
        self.constant_images = ConstantImages()
        # a registration may use the cache from two threads (the affine stage runs in the background)
        self._lock = threading.Lock()

    def mark_constant(self, image: "sitk.Image") -> None:
        """Promise that ``image`` (a SimpleITK image) will never change its voxels or geometry: the
        registrations using this cache then compute its content digest, the key of its cached
        features, alignment and scores, once for the object's lifetime instead of on every call
        (0.3 s per call for a 512x512x600 CT). Only for images nothing writes to afterwards: a
        changed image would be handed its earlier content's features."""
        self.constant_images.add(image)

    def get_or_compute(self, key: Hashable, compute: Callable[[], torch.Tensor],
                       device: Optional[torch.device] = None) -> torch.Tensor:
        """The cached tensor for ``key`` (moved to ``device`` when read from disk), or ``compute()``."""
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
        path = self._path(key)
        if path is not None and path.is_file():
            try:
                value = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # an unreadable or foreign file is recomputed and replaced
                value = None
            if isinstance(value, torch.Tensor):
                with self._lock:
                    self.hits += 1
                    self.disk_hits += 1
                return self._remember(key, value.to(device) if device is not None else value)
        with self._lock:
            self.misses += 1
        value = compute()
        if path is not None:
            self._write(path, value)
        return self._remember(key, value)

    def get_or_compute_value(self, key: Hashable, compute: Callable[[], Any], keep: Optional[int] = None) -> Any:
        """Like :meth:`get_or_compute` for any value (e.g. scores before registration); memory
        only, at most ``4 * max_items`` values. ``key`` is a tuple whose first item names the kind
        of value; ``keep`` bounds the values of that kind (for large ones: the oldest go first)."""
        with self._lock:
            if key in self._values:
                self.hits += 1
                return self._values[key]
            self.misses += 1
        value = compute()
        with self._lock:
            self._values[key] = value
            if keep is not None:
                same_kind = [k for k in self._values if isinstance(k, tuple) and k[:1] == key[:1]]
                for old in same_kind[:max(0, len(same_kind) - keep)]:
                    del self._values[old]
            while len(self._values) > 4 * self.max_items:
                self._values.pop(next(iter(self._values)))
        return value

    def _remember(self, key: Hashable, value: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return value

    def _path(self, key: Hashable) -> Optional[Path]:
        if self.directory is None:
            return None
        return self.directory / (hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest() + ".pt")

    @staticmethod
    def _write(path: Path, value: torch.Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
        os.close(handle)
        try:
            torch.save(value.detach().cpu().contiguous(), temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk are kept)."""
        self._items.clear()
        self._values.clear()

    def __len__(self) -> int:
        return len(self._items)
