"""Content digests of images, the keys of everything cached between registrations (no torch)."""

from __future__ import annotations

import hashlib

import numpy as np
import SimpleITK as sitk


def image_digest(image: sitk.Image) -> str:
    """A content digest of an image's voxels and geometry (BLAKE2b, 128 bit)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetPixelIDValue())).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).data)
    return h.hexdigest()
