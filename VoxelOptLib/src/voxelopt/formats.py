"""Names of what a registration writes, and their formats (plain Python: the CLI's help and
argument checks use them without loading numpy, SimpleITK or torch)."""

from __future__ import annotations

from typing import Sequence

from .errors import InputError

#: Output file formats accepted for images and for the displacement field (``h5``: an ITK
#: ``DisplacementFieldTransform`` file).
IMAGE_FORMATS = ("nii.gz", "nii", "nrrd", "mha")
FIELD_FORMATS = IMAGE_FORMATS + ("h5",)

#: The outputs a registration can write, in writing order ("labels": the warped moving labels).
OUTPUTS = ("field", "warped", "labels", "entropy", "jacobian", "metrics")

#: Where the written field lives: its own grid (the solver's working grid, 4 mm by default) or
#: the full fixed grid.
FIELD_GRIDS = ("working", "fixed")


def check_format(fmt: str, allowed: Sequence[str], what: str) -> str:
    """``fmt`` without a leading dot, or :class:`InputError` naming the allowed formats."""
    fmt = fmt.lstrip(".")
    if fmt not in allowed:
        raise InputError(f"unknown {what} format {fmt!r}; choose one of {', '.join(allowed)}")
    return fmt
