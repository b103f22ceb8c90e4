"""Reading inputs and writing outputs, with clear errors and no partial output.

Images are read and written with SimpleITK (NIfTI, NRRD, MetaImage, ...). Displacement fields
are ITK displacement-field images (3 components, LPS mm, resampling direction); ``.h5`` / ``.tfm``
paths are written as an ITK ``DisplacementFieldTransform`` file instead.

:func:`atomic_output_dir` writes every file into a hidden temporary folder first and moves them
into place only when all were written, so a failure leaves no partial output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

#: Output file formats accepted for images and for the displacement field.
IMAGE_FORMATS = ("nii.gz", "nii", "nrrd", "mha")
FIELD_FORMATS = IMAGE_FORMATS + ("h5",)


@dataclasses.dataclass
class ArrayImage:
    """A numpy array with its geometry (for callers without SimpleITK images).

    Attributes:
        array: (Z, Y, X) array, SimpleITK array order (z slowest).
        spacing: voxel size in mm along (x, y, z).
        origin: LPS mm position of voxel (0, 0, 0).
        direction: 3x3 direction cosines, row-major; columns are the x, y, z axis directions.
    """

    array: np.ndarray
    spacing: Sequence[float] = (1.0, 1.0, 1.0)
    origin: Sequence[float] = (0.0, 0.0, 0.0)
    direction: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def to_sitk(self) -> sitk.Image:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InputError(f"an image array must be 3-D (z, y, x), got shape {array.shape}")
        image = sitk.GetImageFromArray(array)
        image.SetSpacing([float(v) for v in self.spacing])
        image.SetOrigin([float(v) for v in self.origin])
        image.SetDirection([float(v) for v in np.asarray(self.direction, dtype=float).ravel()])
        return image


ImageLike = Union[sitk.Image, ArrayImage, str, "os.PathLike[str]"]


def read_image(path: PathLike, what: str = "image") -> sitk.Image:
    """Read an image file, raising :class:`InputError` naming ``what`` and the path on failure."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} path is not a file: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise InputError(f"cannot read {what} {path}: {first_line}") from None


def as_image(value: ImageLike, what: str) -> sitk.Image:
    """A SimpleITK image from an image, an :class:`ArrayImage` or a path."""
    if isinstance(value, sitk.Image):
        return value
    if isinstance(value, ArrayImage):
        return value.to_sitk()
    if isinstance(value, (str, os.PathLike)):
        return read_image(value, what)
    raise InputError(f"{what} must be a SimpleITK image, an ArrayImage or a file path, got {type(value).__name__}")


def write_image(image: sitk.Image, path: PathLike) -> None:
    """Write an image (gzip level 1 for .nii.gz: fast, still small)."""
    path = Path(path)
    if path.name.endswith(".nii.gz"):
        sitk.WriteImage(image, str(path), True, 1)
    else:
        sitk.WriteImage(image, str(path), True)


def write_field(field: sitk.Image, path: PathLike) -> None:
    """Write a displacement field: an image, or a DisplacementFieldTransform for .h5/.tfm."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5", ".tfm"):
        transform = sitk.DisplacementFieldTransform(sitk.Image(field))  # the transform takes the copy
        sitk.WriteTransform(transform, str(path))
    else:
        write_image(field, path)


def read_field(path: PathLike) -> sitk.Image:
    """Read a displacement field written by :func:`write_field` (image or transform file)."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5", ".tfm"):
        if not path.is_file():
            raise InputError(f"displacement field file not found: {path}")
        try:
            transform = sitk.ReadTransform(str(path))
        except RuntimeError:
            raise InputError(f"cannot read displacement field transform {path}") from None
        if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
            transform = transform.GetNthTransform(0)
        try:
            return sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        except (RuntimeError, TypeError):
            raise InputError(f"{path} does not hold a displacement field transform") from None
    field = read_image(path, "displacement field")
    if field.GetNumberOfComponentsPerPixel() != 3 or field.GetDimension() != 3:
        raise InputError(f"{path} is not a 3-D displacement field (need 3 components per voxel)")
    return sitk.Cast(field, sitk.sitkVectorFloat64)


def check_format(fmt: str, allowed: Sequence[str], what: str) -> str:
    fmt = fmt.lstrip(".")
    if fmt not in allowed:
        raise InputError(f"unknown {what} format {fmt!r}; choose one of {', '.join(allowed)}")
    return fmt


def ensure_writable_dir(path: PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".voxelopt-write-test-"):
            pass
    except OSError as error:
        raise InputError(f"output directory {path} cannot be written: {error.strerror or error}") from None
    return path


@contextlib.contextmanager
def atomic_output_dir(out_dir: PathLike) -> Iterator[Path]:
    """Yield a temporary folder inside ``out_dir``; on success move its files into ``out_dir``.

    On any exception the temporary folder is removed and ``out_dir`` is left as it was (a
    folder created for the purpose is removed again).
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    ensure_writable_dir(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=".voxelopt-partial-", dir=out_dir))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            os.replace(item, out_dir / item.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
