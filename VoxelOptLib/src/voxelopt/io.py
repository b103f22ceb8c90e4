"""Reading inputs and writing outputs, with clear errors and no partial output.

Images are read and written with SimpleITK (NIfTI, NRRD, MetaImage, ...). Displacement fields
are ITK displacement-field images (3 components, LPS mm, resampling direction); ``.h5`` / ``.tfm``
paths are written as an ITK ``DisplacementFieldTransform`` file instead.

Output folders (written all or nothing, never over an input) are :mod:`voxelopt.output_dir`'s.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gzip
import math
import os
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError, itk_message
from .geometry.checks import check_geometry, nonfinite_count
from .output_dir import PathLike
from . import voxels



@dataclasses.dataclass
class ArrayImage:
    """A numpy array with its geometry (for callers without SimpleITK images).

    Attributes:
        array: (Z, Y, X) array, SimpleITK array order (z slowest).
        spacing: voxel size in mm along (x, y, z); 1 mm if not given, as in SimpleITK: give the
            image's own (a 2 mm CT given as 1 mm is registered as half its size).
        origin: LPS mm position of voxel (0, 0, 0).
        direction: 3x3 direction cosines, row-major; columns are the x, y, z axis directions.
    """

    array: np.ndarray
    spacing: Sequence[float] = (1.0, 1.0, 1.0)
    origin: Sequence[float] = (0.0, 0.0, 0.0)
    direction: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def to_sitk(self) -> sitk.Image:
        """The SimpleITK image (a copy of the array; bool becomes uint8, float16 float32), raising
        :class:`InputError` for an array or a geometry SimpleITK cannot hold."""
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InputError(f"an image array must be 3-D (z, y, x), got shape {array.shape}")
        if array.dtype.kind == "b" or array.dtype == np.float16:  # types SimpleITK has no image of
            array = array.astype(np.uint8 if array.dtype.kind == "b" else np.float32)
        if array.dtype.kind not in "iuf" or array.dtype.itemsize > 8:
            raise InputError(f"an image array must hold integers or floats, got {array.dtype}")
        spacing, origin = _vector(self.spacing, 3, "spacing"), _vector(self.origin, 3, "origin")
        direction = _vector(self.direction, 9, "direction")
        check_geometry(spacing, origin, direction, "an image array")  # before SimpleITK refuses it with an ITK error
        image = sitk.GetImageFromArray(array)
        image.SetSpacing([float(v) for v in spacing])
        image.SetOrigin([float(v) for v in origin])
        image.SetDirection([float(v) for v in direction])
        return image


def _vector(values: Sequence[float], size: int, what: str) -> np.ndarray:
    """``values`` as ``size`` floats, or an :class:`InputError` naming ``what`` (whether they are
    valid is :func:`~voxelopt.geometry.check_geometry`'s to say)."""
    try:
        vector = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        vector = None
    if vector is None or vector.size != size:
        raise InputError(f"an image's {what} must be {size} numbers, got {values!r}")
    return vector


ImageLike = Union[sitk.Image, ArrayImage, str, "os.PathLike[str]"]


def read_image(path: PathLike, what: str = "image") -> sitk.Image:
    """Read an image file (any format SimpleITK reads) or a folder holding one DICOM series,
    raising :class:`InputError` naming ``what`` and the path on failure."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if path.is_dir():
        return read_dicom_series(path, what)
    if not path.is_file():
        raise InputError(f"{what} path is not a file: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read {what} {path}: {itk_message(error)}") from None
    bad = _nonfinite_count(image, path)
    if bad:
        raise InputError(f"{what} {path} contains {bad} NaN or infinite voxel(s); replace them with finite values")
    return image


def _nonfinite_count(image: sitk.Image, path: Path) -> int:
    """The NaN/Inf voxels of an image just read from ``path`` (0 for integer voxels): counted in
    the file for NIfTI, whose reader turns them into 0 (see :func:`nifti_nonfinite_count`), else
    in the image, a few slices at a time (no full-size temporary)."""
    if image.GetPixelID() not in _FLOAT_PIXEL_TYPES:
        return 0
    if path.name.endswith((".nii", ".nii.gz")):
        # a float image with no voxel exactly 0 proves the file has none
        return nifti_nonfinite_count(path) if (voxels.view(image) == 0).any() else 0
    return nonfinite_count(voxels.view(image))


def read_dicom_series(folder: PathLike, what: str = "image") -> sitk.Image:
    """The DICOM series in ``folder`` (its files, not subfolders) as one image, read by GDCM
    through SimpleITK: slices ordered by position, geometry from the DICOM tags (LPS mm, like
    every image here), voxel values with the rescale slope and intercept applied (CT in HU).

    Raises :class:`InputError` when the folder holds no DICOM series, or several (listed with
    their slice counts and descriptions: a folder per series, or a conversion such as
    ``dcm2niix``, tells them apart), or one whose slices are unevenly spaced (a slice missing:
    ITK would spread the others evenly, a wrong geometry).
    """
    folder = Path(folder)
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "No Series were found": the error below says it
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series = ()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not series:
        raise InputError(f"{what} folder {folder} holds no DICOM series (its subfolders are not searched); give an "
                         "image file or a folder holding the files of one DICOM series")
    files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series}
    if len(series) > 1:
        listing = "; ".join(f"{uid} ({len(names)} files{_series_description(names[0])})" for uid, names in files.items())
        raise InputError(f"{what} folder {folder} holds {len(series)} DICOM series: {listing}; "
                         "put the series to register in a folder of its own")
    names = files[series[0]]  # one file may hold every slice (a multi-frame object): checked once read
    steps = _slice_steps(names)  # before reading: ITK would read a gap as evenly spaced, with a warning only
    if steps is not None and np.ptp(steps) > max(0.01 * float(np.median(steps)), 1e-3):
        raise InputError(f"{what} DICOM series in {folder} has unevenly spaced slices ({float(steps.min()):g} to "
                         f"{float(steps.max()):g} mm apart: a slice missing, or a varying spacing), so it is no "
                         "regular grid; complete it or resample it onto one first")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read {what} DICOM series in {folder}: {itk_message(error)}") from None
    if image.GetDimension() == 3 and image.GetSize()[2] < 2:
        raise InputError(f"{what} DICOM series in {folder} has a single slice; a 3-D series is needed")
    return image


def _slice_steps(file_names: Sequence[str]) -> Optional[np.ndarray]:
    """The distances (mm) between successive slices of a DICOM series (files in position order)
    along the normal of the first file's slice, from each file's Image Position (Patient); None
    when a file has no position. ITK reads a series with a missing slice as evenly spaced (a
    warning on standard error only): the positions tell. 0.3 ms per file."""
    reader = sitk.ImageFileReader()
    positions, normal = [], None
    for name in file_names:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            positions.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        except (RuntimeError, ValueError):
            return None
        if normal is None and reader.GetDimension() == 3:  # a slice read as a 3-D image of one plane
            normal = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    if len(positions) < 3 or normal is None:
        return None
    return np.abs(np.diff(np.asarray(positions) @ normal))


def _series_description(file_name: str) -> str:
    """``, "<Series Description>"`` of a DICOM file, or nothing when it has none or cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_name)
    try:
        reader.ReadImageInformation()
        text = reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""
    except RuntimeError:
        text = ""
    return f', "{text}"' if text else ""


def read_images(items: Sequence[Tuple[Optional[PathLike], str]]) -> List[Optional[sitk.Image]]:
    """:func:`read_image` of each ``(path, what)`` (None for a None path), the files read
    concurrently (SimpleITK releases the GIL while it reads and inflates; two threads halve the
    reading of a CT pair with its labels: 0.30 -> 0.16 s at 192x160x256, 0.9-1.2 -> 0.5 s at
    512x512x300). Every file is read before an error is raised: the first failing item's."""
    wanted = [(index, path, what) for index, (path, what) in enumerate(items) if path is not None]
    out: List[Optional[sitk.Image]] = [None] * len(items)
    if not wanted:
        return out
    with ThreadPoolExecutor(max_workers=min(len(wanted), max(1, os.cpu_count() or 1), 4)) as pool:
        futures = [(index, pool.submit(read_image, path, what)) for index, path, what in wanted]
    for index, future in futures:  # in order: the first item's error first
        out[index] = future.result()
    return out


#: SimpleITK pixel types whose voxels may be NaN or infinite.
_FLOAT_PIXEL_TYPES = (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64)


#: NIfTI-1 datatype codes of floating-point voxels and their numpy types.
_NIFTI_FLOAT_TYPES = {16: np.float32, 64: np.float64}


def nifti_nonfinite_count(path: PathLike) -> int:
    """The number of NaN/Inf voxels of a floating-point NIfTI-1 file (0 for integer files).

    ITK's NIfTI reader replaces NaN by 0 when it reads a file, so NaN voxels would silently
    reach the registration as 0 HU; this reads the raw voxels (streamed, a few MB at a time) to
    find them. NIfTI-2 and non-float files return 0.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        header = handle.read(352)
        if len(header) < 352:
            return 0
        for order in ("<", ">"):
            if struct.unpack(order + "i", header[:4])[0] == 348:
                break
        else:
            return 0  # not NIfTI-1
        dims = struct.unpack(order + "8h", header[40:56])
        datatype = struct.unpack(order + "h", header[70:72])[0]
        offset = int(struct.unpack(order + "f", header[108:112])[0])
        if datatype not in _NIFTI_FLOAT_TYPES:
            return 0
        dtype = np.dtype(_NIFTI_FLOAT_TYPES[datatype]).newbyteorder(order)
        count = int(np.prod([max(1, d) for d in dims[1:1 + max(1, dims[0])]]))
        handle.read(max(0, offset - 352))
        bad, remaining, chunk = 0, count, 4 * 1024 * 1024
        while remaining > 0:
            data = handle.read(min(remaining, chunk) * dtype.itemsize)
            if not data:
                break
            values = np.frombuffer(data[: len(data) - len(data) % dtype.itemsize], dtype=dtype)
            bad += nonfinite_count(values)
            remaining -= values.size
        return bad


def as_image(value: ImageLike, what: str) -> sitk.Image:
    """A SimpleITK image from an image, an :class:`ArrayImage` or a path."""
    if isinstance(value, sitk.Image):
        return value
    if isinstance(value, ArrayImage):
        return value.to_sitk()
    if isinstance(value, (str, os.PathLike)):
        return read_image(value, what)
    raise InputError(f"{what} must be a SimpleITK image, an ArrayImage or a file path, got {type(value).__name__}")


def writable_array(image: sitk.Image) -> np.ndarray:
    """A writable (K, J, I) numpy view of a *new* scalar SimpleITK image's voxels, for writing
    outputs straight into the image: SimpleITK's own views are read-only, and an array copied in
    (``GetImageFromArray``) costs a second full-grid buffer (0.5-0.9 s of fresh memory and copy
    for an int16 512x512x600 CT). Valid while ``image`` lives, and only for an image whose buffer
    nothing else shares (one just constructed): SimpleITK copies a shared buffer before writing
    to it, which this view bypasses."""
    view = voxels.view(image)  # makes the buffer the image's own (MakeUnique)
    buffer = (ctypes.c_char * view.nbytes).from_address(view.__array_interface__["data"][0])
    return np.frombuffer(buffer, dtype=view.dtype).reshape(view.shape)


#: gzip level of compressed outputs: the fastest; CT compresses about as well as at the default level.
COMPRESSION_LEVEL = 1


def write_image(image: sitk.Image, path: PathLike) -> None:
    """Write an image; its format follows the file name (``.nii`` is uncompressed).

    ``.nii.gz`` is gzip-compressed on every core (:mod:`voxelopt.compression`; SimpleITK's own
    writer compresses on one core): a 3-D scalar image straight from its voxels behind the NIfTI
    header SimpleITK writes for its geometry (:func:`nifti_header`; the bytes are those of
    SimpleITK's ``.nii``), other images through an uncompressed ``.nii`` SimpleITK writes beside
    the target; other compressed formats (``.nrrd``, ``.mha``) at gzip level 1 by SimpleITK.
    """
    path = Path(path)
    if not path.name.endswith(".nii.gz"):
        sitk.WriteImage(image, str(path), True, COMPRESSION_LEVEL)
        return
    from .compression import gzip_buffers, gzip_file

    plain = path.with_name(f".{path.name[:-len('.gz')]}")
    try:
        header = nifti_header(image, path.parent)
        if header is not None:
            gzip_buffers([header, voxels.view(image)], path, COMPRESSION_LEVEL)
        else:
            sitk.WriteImage(image, str(plain), False)
            gzip_file(plain, path, COMPRESSION_LEVEL)
    except BaseException:
        path.unlink(missing_ok=True)  # no partial file under the output's name
        raise
    finally:
        if plain.exists():
            plain.unlink()


#: NIfTI-1: the header's size, where the voxels start in a ``.nii``, and the byte offsets of the
#: header's fields ``dim`` (8 int16) and ``vox_offset`` (float32).
_NIFTI_HEADER_BYTES, _NIFTI_VOXEL_OFFSET, _NIFTI_DIM, _NIFTI_VOX_OFFSET = 348, 352, 40, 108


def nifti_header(image: sitk.Image, folder: PathLike) -> Optional[bytes]:
    """The first bytes of the ``.nii`` file SimpleITK writes for ``image``, up to its voxels, for a
    3-D scalar image; None for any other (vector images are stored planar, unlike in memory).

    SimpleITK writes them for a 1x1x1 image with the same pixel type, geometry and metadata (in a
    temporary file in ``folder``); only the image size (``dim[1..3]``) depends on the voxels'
    count, and is set here. Anything unexpected in that file (another byte order, header size or
    voxel offset) gives None: the caller then has SimpleITK write the whole image.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return None
    if max(image.GetSize()) > np.iinfo(np.int16).max:
        return None
    probe = sitk.Image([1, 1, 1], image.GetPixelID())
    probe.SetSpacing(image.GetSpacing())
    probe.SetOrigin(image.GetOrigin())
    probe.SetDirection(image.GetDirection())
    for key in image.GetMetaDataKeys():
        probe.SetMetaData(key, image.GetMetaData(key))
    handle, name = tempfile.mkstemp(suffix=".nii", prefix=".header-", dir=str(folder))
    os.close(handle)
    try:
        sitk.WriteImage(probe, name, False)
        data = Path(name).read_bytes()
    finally:
        os.unlink(name)
    pixel_bytes = voxels.view(probe).itemsize
    dims = struct.unpack_from("<4h", data, _NIFTI_DIM)
    if (len(data) != _NIFTI_VOXEL_OFFSET + pixel_bytes or struct.unpack_from("<i", data, 0)[0] != _NIFTI_HEADER_BYTES
            or struct.unpack_from("<f", data, _NIFTI_VOX_OFFSET)[0] != _NIFTI_VOXEL_OFFSET or dims != (3, 1, 1, 1)):
        return None
    header = bytearray(data[:_NIFTI_VOXEL_OFFSET])
    struct.pack_into("<3h", header, _NIFTI_DIM + 2, *image.GetSize())
    return bytes(header)


def write_field(field: sitk.Image, path: PathLike) -> None:
    """Write a displacement field: an image, or a DisplacementFieldTransform for .h5/.tfm.

    The file holds 64-bit vectors whatever the field's type in memory, because ITK's (and
    SimpleITK's) ``DisplacementFieldTransform`` accepts only those: ``sitk.DisplacementFieldTransform(
    sitk.ReadImage(path))`` works on what this writes.
    """
    path = Path(path)
    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    if path.suffix in (".h5", ".hdf5", ".tfm"):
        sitk.WriteTransform(sitk.DisplacementFieldTransform(field), str(path))
    else:
        write_image(field, path)


def read_field(path: PathLike) -> sitk.Image:
    """Read a displacement field written by :func:`write_field` (image or transform file)."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5", ".tfm"):
        if not path.is_file():
            raise InputError(f"displacement field file not found: {path}" if not path.exists() else
                             f"displacement field path is not a file: {path}")
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


def json_safe(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples, numbers, strings) as standard JSON takes it: NaN and
    infinities become None (``json.dumps`` would write the non-standard ``NaN``), keys strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
