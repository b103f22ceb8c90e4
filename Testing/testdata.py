"""Shared test helpers: small synthetic images and the location of ../shared (import as `testdata`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared data folder), which is absent here")
    return path


def oblique_direction(angles_deg=(20.0, -10.0, 30.0)) -> tuple:
    """A proper rotation matrix (row-major tuple) from three Euler angles in degrees."""
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*np.deg2rad(angles_deg))
    return tuple(transform.GetMatrix())


def make_image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def smooth_random_volume(shape, seed=0, smooth=2.0) -> np.ndarray:
    """Smooth random texture in roughly [-300, 300] HU (structure everywhere, for shift tests)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), smooth)
    return (volume / volume.std() * 150.0).astype(np.float32)


def count_calls(monkeypatch, owner, name):
    """A list that gets one entry per call of ``owner.name`` (which still runs)."""
    calls, original = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.1.1",
                       description: str = "test series") -> Path:
    """Write a 3-D CT image in HU as a DICOM series of signed 16-bit slices (one file per slice,
    written in reverse order), its geometry in the Image Position / Orientation (Patient) tags
    (LPS mm), as CT scanners store it."""
    import locale

    folder.mkdir(parents=True, exist_ok=True)
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the C locale and leaves it
    stored = sitk.Cast(image, sitk.sitkInt16)
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    orientation = "\\".join(f"{v:.10g}" for v in (*d[:, 0], *d[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in reversed(range(image.GetSize()[2])):
        slice_k = stored[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": "CT", "0008|103e": description, "0020|000d": series_uid + ".0", "0020|000e": series_uid,
                "0008|0018": f"{series_uid}.{k + 1}", "0020|0013": str(k + 1), "0020|0037": orientation,
                "0020|0032": "\\".join(f"{v:.10g}" for v in position), "0018|0050": f"{image.GetSpacing()[2]:.10g}"}
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{series_uid}-{k:04d}.dcm"))
        writer.Execute(slice_k)
    locale.setlocale(locale.LC_ALL, saved_locale)
    return folder
