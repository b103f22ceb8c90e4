"""A cache of working-grid features and other per-pair values, so solver-only re-runs skip
feature extraction, the affine alignment and the scores before registration.

Entries are keyed by a digest of the image content and geometry, the grid, the initial
translation, the feature extractor's cache key and the device, so a key can only match when the
features would be identical. In memory, least recently used entries are dropped beyond
``max_items``. With a ``directory`` every feature is also kept on disk (one ``.pt`` file per
library version holding a plain tensor and the name of its entry, read back with
``weights_only=True`` and checked), and so are the small values asked for ``on_disk`` (the affine
matrix, the scores before registration: one ``.json`` file each, keyed also by the versions of
the library and of SimpleITK), so they survive between processes (``voxelopt register
--feature-cache DIR``). Nothing on disk is unpickled.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, Optional, Union

import numpy as np
import torch

from .digest import ConstantImages
from .errors import ConfigError
from .output_dir import ensure_writable_dir

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
        """``max_items``: feature tensors kept in memory (an integer >= 1); ``directory``: a folder
        (created if needed) that keeps them across processes too. Raises :class:`ConfigError` for
        a bad ``max_items`` and :class:`InputError` for a folder that cannot be written."""
        if isinstance(max_items, bool) or not isinstance(max_items, (int, np.integer)) or max_items < 1:
            hint = (f" (for a cache folder: FeatureCache(directory={str(max_items)!r}))"
                    if isinstance(max_items, (str, os.PathLike)) else "")
            raise ConfigError(f"max_items must be an integer >= 1, got {max_items!r}{hint}")
        self.max_items = int(max_items)
        self.directory = ensure_writable_dir(directory, "feature cache directory") if directory is not None else None
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
                       device: Optional[torch.device] = None,
                       valid: Optional[Callable[[torch.Tensor], bool]] = None) -> torch.Tensor:
        """The cached tensor for ``key`` (moved to ``device`` when read from disk), or ``compute()``.

        A file on disk is used only when it names ``key`` and its tensor passes ``valid``;
        otherwise (damaged, edited, copied from another entry) it is recomputed and replaced."""
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
        path = self._path(key)
        if path is not None and path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # an unreadable or foreign file is recomputed and replaced
                stored = None
            # the file must say it holds this key's tensor (a file copied or renamed from another
            # entry holds another image's features), and the tensor must be usable
            value = stored.get("tensor") if isinstance(stored, dict) and stored.get("key") == path.stem else None
            if isinstance(value, torch.Tensor) and (valid is None or valid(value)):
                with self._lock:
                    self.hits += 1
                    self.disk_hits += 1
                return self._remember(key, value.to(device) if device is not None else value)
        with self._lock:
            self.misses += 1
        value = compute()
        if path is not None:
            self._write(path, {"key": path.stem, "tensor": value.detach().cpu().contiguous()})
        return self._remember(key, value)

    def get_or_compute_value(self, key: Hashable, compute: Callable[[], Any], keep: Optional[int] = None,
                             on_disk: bool = False, valid: Optional[Callable[[Any], bool]] = None) -> Any:
        """Like :meth:`get_or_compute` for any value (e.g. scores before registration); at most
        ``4 * max_items`` values in memory. ``key`` is a tuple whose first item names the kind
        of value; ``keep`` bounds the values of that kind (for large ones: the oldest go first).
        ``on_disk``: with a ``directory``, the value is also kept there, as JSON — it must be a
        float ``numpy`` array or made of dicts with string keys, lists, strings, numbers and
        None (a file that cannot be read back, or whose value ``valid`` refuses, is recomputed
        and replaced: the files are not trusted to hold what this version wrote)."""
        with self._lock:
            if key in self._values:
                self.hits += 1
                return self._values[key]
        path = self._value_path(key) if on_disk else None
        if path is not None and path.is_file():
            try:
                value = _from_json(json.loads(path.read_text(encoding="utf-8")))
                if valid is not None and not valid(value):
                    value = _UNREADABLE
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                value = _UNREADABLE
            if value is not _UNREADABLE:
                with self._lock:
                    self.hits += 1
                    self.disk_hits += 1
                return self._keep_value(key, value, keep)
        with self._lock:
            self.misses += 1
        value = compute()
        if path is not None:
            self._write_text(path, json.dumps(_to_json(value)))
        return self._keep_value(key, value, keep)

    def _keep_value(self, key: Hashable, value: Any, keep: Optional[int]) -> Any:
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
        """A tensor's file: keyed also by this library's version (another version may compute the
        features otherwise)."""
        if self.directory is None:
            return None
        from . import __version__

        return self.directory / (hashlib.blake2b(repr((__version__, key)).encode(), digest_size=16).hexdigest() + ".pt")

    def _value_path(self, key: Hashable) -> Optional[Path]:
        """A value's file: keyed also by the versions of this library and of SimpleITK (another
        version may compute the value otherwise; features carry their extractor's parameters in
        their key)."""
        if self.directory is None:
            return None
        import SimpleITK as sitk

        from . import __version__

        versions = (__version__, sitk.Version.VersionString())
        return self.directory / (hashlib.blake2b(repr(("value", versions, key)).encode(), digest_size=16).hexdigest()
                                 + ".json")

    @staticmethod
    def _write(path: Path, value: Dict[str, Any]) -> None:
        _write_atomically(path, lambda temporary: torch.save(value, temporary))

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        _write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk are kept)."""
        self._items.clear()
        self._values.clear()

    def __len__(self) -> int:
        return len(self._items)


_UNREADABLE = object()


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(temporary)`` then rename it to ``path``: a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _to_json(value: Any) -> Dict[str, Any]:
    """A value for :meth:`FeatureCache.get_or_compute_value`'s files: a float array or plain JSON."""
    if isinstance(value, np.ndarray):
        return {"float64 array": np.asarray(value, dtype=np.float64).tolist()}
    return {"json": value}


def _from_json(stored: Dict[str, Any]) -> Any:
    if "float64 array" in stored:
        return np.asarray(stored["float64 array"], dtype=np.float64)
    return stored["json"]
