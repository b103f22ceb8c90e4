"""The common initial alignment of a dataset run: applied once to the moving image and labels
before any method runs, so that VoxelOpt and every peer start from the same position.

The alignment is a translation ``t`` (LPS mm) with ``x -> x + t`` mapping fixed points to
moving points (:func:`voxelopt.inputs.initial_translation`: ``none``, ``centers`` or ``com``).
It is applied without resampling, by moving the moving image's origin by ``-t``: the aligned
image satisfies ``aligned(x) = moving(x + t)``. Fields that methods return for the aligned
pair are scored against the equally aligned moving labels, so "initial" Dice/HD95 are those of
the common starting point, and a ground-truth field ``g`` (towards the original moving image)
becomes ``g - t`` (:func:`relative_to_alignment`).
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from voxelopt.config import SCHEMA
from voxelopt.errors import ConfigError
from voxelopt.inputs import initial_translation
from voxelopt import voxels


#: The initial alignments a run applies once to the moving image for every method: translations,
#: applied without resampling. VoxelOpt's ``affine`` is not one of them: it is VoxelOpt's own
#: stage, run from such a common start, as elastix and ANTs run theirs.
COMMON_MODES: Tuple[str, ...] = tuple(m for m in SCHEMA["init"].choices if m != "affine")


@dataclasses.dataclass(frozen=True)
class InitialAlignment:
    """How the moving image is aligned before every method.

    Attributes:
        mode: ``"none"``, ``"centers"`` or ``"com"`` (centres of mass of the windowed intensities).
        hu_window: intensity window (HU) weighting the centre of mass.
    """

    mode: str = "none"
    hu_window: Tuple[float, float] = (-800.0, 500.0)

    def __post_init__(self) -> None:
        if self.mode not in COMMON_MODES:
            raise ConfigError(f"unknown initial alignment {self.mode!r}; choose one of {', '.join(COMMON_MODES)}")

    def translation(self, fixed: sitk.Image, moving: sitk.Image) -> np.ndarray:
        """The translation ``t`` (mm, LPS) of this pair."""
        return np.asarray(initial_translation(fixed, moving, self.mode, tuple(self.hu_window)), dtype=np.float64)

    def describe(self) -> str:
        """One sentence for results.md."""
        what = {"none": "none (the images' own headers)", "centers": "image centres",
                "com": "centres of mass of the windowed intensities"}[self.mode]
        return (f"Initial alignment: {self.mode} — {what}. It is applied once to the moving image and labels before "
                "any method runs, so every method starts from it; the 'initial' Dice and HD95 are measured there.")


def shifted(image: sitk.Image, translation_mm: np.ndarray) -> sitk.Image:
    """``image`` with its origin moved by ``-translation_mm``: ``shifted(x) = image(x + t)`` (no resampling)."""
    out = sitk.Image(image)
    out.SetOrigin(tuple(float(o - t) for o, t in zip(image.GetOrigin(), translation_mm)))
    return out


def relative_to_alignment(field: sitk.Image, translation_mm: np.ndarray) -> sitk.Image:
    """A displacement field towards the original moving image (LPS mm, x y z components) made
    relative to the aligned moving image: ``field - t``."""
    array = voxels.copy(field).astype(np.float64) - np.asarray(translation_mm, dtype=np.float64)
    out = sitk.GetImageFromArray(array, isVector=True)
    out.CopyInformation(field)
    return out
