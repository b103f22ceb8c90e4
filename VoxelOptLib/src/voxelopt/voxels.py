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
labels full of freed memory. :func:`view` asks SimpleITK once per image object and hands out
that same view afterwards, so no later request moves a buffer an earlier view reads.

The views are read-only. An image must outlive its views, as with SimpleITK's own; and code
outside the library that takes a SimpleITK view of an image the library is still reading (a
result's images, say) may move its buffer in the same way.
"""

from __future__ import annotations

import threading
import weakref
from typing import Dict, Tuple

import numpy as np
import SimpleITK as sitk

_views: Dict[int, Tuple["weakref.ref[sitk.Image]", np.ndarray]] = {}
_lock = threading.RLock()  # re-entrant: a weakref callback may run while it is held


def view(image: sitk.Image) -> np.ndarray:
    """A read-only (z, y, x[, components]) view of ``image``'s voxels, the same array on every call
    for one image object (see the module's docstring)."""
    key = id(image)
    with _lock:
        entry = _views.get(key)
        if entry is not None and entry[0]() is image:
            return entry[1]
        array = sitk.GetArrayViewFromImage(image)

        def forget(_: object) -> None:  # the image is gone: its id may be reused
            with _lock:
                current = _views.get(key)
                if current is not None and current[0]() is None:
                    del _views[key]

        _views[key] = (weakref.ref(image, forget), array)
        return array


def copy(image: sitk.Image) -> np.ndarray:
    """A writable copy of ``image``'s voxels (as ``sitk.GetArrayFromImage``, through :func:`view`)."""
    return np.array(view(image), copy=True)
