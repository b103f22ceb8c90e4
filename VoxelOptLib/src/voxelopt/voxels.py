"""NumPy views of SimpleITK images that stay valid while other threads run SimpleITK filters on
the same images: every view the library and the Slicer module take goes through :func:`view`
(and :func:`copy`), never through ``sitk.GetArrayViewFromImage``/``GetArrayFromImage`` (a test
holds the code to it). No torch.

Why: SimpleITK images are copy-on-write. ``sitk.GetArrayViewFromImage`` first makes the image's
buffer its own (``Image.MakeUnique``); while a filter runs on the image in another thread the
buffer is shared with the filter, so the image is given a fresh copy, and a view taken before
then points at the old buffer, which is freed when the filter finishes. The registration's
outputs stage resamples the moving labels on one thread (the scores before registration) while
the label warp and the scorer read them on others: about one run in ten under load wrote warped
labels full of freed memory. Within one library operation (:func:`stable_views`: a registration,
a warp, a save, an evaluation) :func:`view` asks SimpleITK once per image object and hands out
that same view afterwards, so no later request moves a buffer an earlier view reads.

Between operations the views are forgotten: the caller may edit an image (``image[...] = v``),
and SimpleITK then gives an image whose buffer was shared (with a copy ``sitk.Image(image)``, or
with a filter) a buffer of its own; a view kept from an earlier operation would read the old
content, or freed memory once the copy is gone. Outside an operation every :func:`view` asks
SimpleITK afresh.

The views are read-only. An image must outlive its views, as with SimpleITK's own; and code
outside the library that takes a SimpleITK view of an image the library is still reading (a
result's images, say) may move its buffer in the same way.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Dict, Tuple

import numpy as np
import SimpleITK as sitk

class ImageMap:
    """Values kept per live SimpleITK image object, keyed by the object's id with a weak reference
    (SimpleITK images are not hashable); an entry goes when its image is freed, so an id reused
    by a later image never finds it. Thread-safe; hold :attr:`lock` around a :meth:`get` and the
    :meth:`set` it decides on. The lock is re-entrant: a weak reference's callback may run while
    it is held."""

    def __init__(self) -> None:
        self._entries: Dict[int, Tuple["weakref.ref[sitk.Image]", Any]] = {}
        self.lock = threading.RLock()

    def get(self, image: sitk.Image, default: Any = None) -> Any:
        """The value kept for ``image``, else ``default``."""
        with self.lock:
            entry = self._entries.get(id(image))
            return entry[1] if entry is not None and entry[0]() is image else default

    def set(self, image: sitk.Image, value: Any) -> None:
        """Keep ``value`` for ``image`` while the image lives."""
        key = id(image)

        def forget(_: object) -> None:  # the image is gone: its id may be reused
            with self.lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0]() is None:
                    del self._entries[key]

        with self.lock:
            entry = self._entries.get(key)
            reference = entry[0] if entry is not None and entry[0]() is image else weakref.ref(image, forget)
            self._entries[key] = (reference, value)

    def clear(self) -> None:
        """Forget every value."""
        with self.lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self.lock:
            return len(self._entries)


_views = ImageMap()
_operations = 0  # library operations running (stable_views blocks entered, not yet left); under _views.lock


class stable_views(contextlib.ContextDecorator):
    """A library operation (a block or a decorated function; nested and concurrent ones count
    once): while any is running, :func:`view` gives one array per image object; when the last
    ends, the views are forgotten (see the module's docstring)."""

    def __enter__(self) -> "stable_views":
        global _operations
        with _views.lock:
            _operations += 1
        return self

    def __exit__(self, *exc_info: Any) -> None:
        global _operations
        with _views.lock:
            _operations -= 1
            if _operations == 0:
                _views.clear()


def view(image: sitk.Image) -> np.ndarray:
    """A read-only (z, y, x[, components]) view of ``image``'s voxels: within a library operation
    (:class:`stable_views`) the same array on every call for one image object, outside one a
    fresh view of its current buffer (see the module's docstring)."""
    with _views.lock:
        array = _views.get(image)
        if array is None:
            array = sitk.GetArrayViewFromImage(image)
            if _operations:
                _views.set(image, array)
        return array


def copy(image: sitk.Image) -> np.ndarray:
    """A writable copy of ``image``'s voxels (as ``sitk.GetArrayFromImage``, through :func:`view`)."""
    return np.array(view(image), copy=True)
