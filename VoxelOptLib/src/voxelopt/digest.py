"""Content digests of images, the keys of everything cached between registrations, and of files
(no torch)."""

from __future__ import annotations

import hashlib
import threading
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from . import voxels

#: A function giving an image's content digest (:func:`image_digest` or a :class:`DigestMemo`).
Digest = Callable[[sitk.Image], str]


def array_digest(array: np.ndarray, header: str = "") -> str:
    """A content digest of ``header`` and an array's bytes (BLAKE2b, 128 bit; about 1 GB/s)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(header.encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def file_digest(path, hasher: "hashlib._Hash", chunk_bytes: int = 1 << 22) -> str:
    """The hex digest of a file's bytes by ``hasher`` (a new ``hashlib`` object, e.g.
    ``hashlib.sha256()``), read in chunks of ``chunk_bytes``."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            hasher.update(block)
    return hasher.hexdigest()


def image_digest(image: sitk.Image) -> str:
    """A content digest of an image's voxels and geometry (:func:`array_digest`)."""
    header = repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetPixelIDValue()))
    return array_digest(voxels.view(image), header)


class ConstantImages:
    """Images whose owner promises that their voxels and geometry never change (e.g. the Slicer
    module's private copies of its volume nodes and label maps), with each one's
    :func:`image_digest` computed on first use and kept while the image object lives: every
    registration given such an image skips its digest (0.3 s for a 512x512x600 CT). Holds weak
    references only. Thread-safe."""

    def __init__(self) -> None:
        self._digests = voxels.ImageMap()  # image -> its digest, None until first asked for

    def add(self, image: sitk.Image) -> None:
        """Promise that ``image`` will not change from now on (changing it afterwards would hand
        out the features and scores of its earlier content)."""
        with self._digests.lock:
            if self._digests.get(image, _ABSENT) is _ABSENT:
                self._digests.set(image, None)

    def digest(self, image: sitk.Image) -> Optional[str]:
        """``image_digest(image)`` for an image given to :meth:`add` (computed once), else None."""
        with self._digests.lock:  # a second caller waits for the first's digest
            known = self._digests.get(image, _ABSENT)
            if known is _ABSENT:
                return None
            if known is None:
                known = image_digest(image)
                self._digests.set(image, known)
            return known

    def __len__(self) -> int:
        return len(self._digests)


_ABSENT = object()


class DigestMemo:
    """:func:`image_digest`, computed at most once per image object: for one registration, whose
    images do not change while it runs (the affine stage's and the features' cache keys both need
    the images' digests, 0.24 s each for a 512x512x300 CT), and not at all for the ``constant``
    images whose digest is already known. Holds the images it has seen, so an object's id is not
    reused while the memo lives. Thread-safe: the affine stage's thread and the features may ask
    for the same image at once (one computes, the other waits)."""

    def __init__(self, constant: Optional[ConstantImages] = None) -> None:
        self._seen: Dict[int, Tuple[sitk.Image, str]] = {}
        self._constant = constant
        self._lock = threading.Lock()

    def __call__(self, image: sitk.Image) -> str:
        known = self._constant.digest(image) if self._constant is not None else None
        if known is not None:
            return known
        with self._lock:
            entry = self._seen.get(id(image))
            if entry is None or entry[0] is not image:
                entry = self._seen[id(image)] = (image, image_digest(image))
            return entry[1]
