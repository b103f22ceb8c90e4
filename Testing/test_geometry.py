"""The physical-geometry contract: grids, voxel/mm fields and resampling against SimpleITK."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from testdata import make_image, oblique_direction
from voxelopt.geometry import (
    Grid,
    image_to_mm_field,
    mm_field_to_image,
    mm_to_voxel_field,
    resample_through_field,
    resize_voxel_field,
    voxel_to_mm_field,
)
from voxelopt.io import read_field, write_field

CPU = torch.device("cpu")


def oblique_grid(size=(20, 16, 12), spacing=(1.5, 1.0, 3.0)):
    return Grid(size, spacing, (10.0, -20.0, 5.0), oblique_direction())


def test_resolution_changes_keep_the_box():
    grid = oblique_grid()
    for other in (grid.with_spacing(2.0), grid.scaled(0.5), grid.with_size((7, 9, 5))):
        corner_a = np.asarray(grid.origin) - grid.index_to_physical @ np.full(3, 0.5)
        corner_b = np.asarray(other.origin) - other.index_to_physical @ np.full(3, 0.5)
        assert np.allclose(corner_a, corner_b)
        assert np.allclose(np.asarray(other.size) * other.spacing, np.asarray(grid.size) * grid.spacing)
        assert np.allclose(other.center(), grid.center())


def test_voxel_mm_round_trip_and_axes():
    grid = oblique_grid()
    u = torch.randn(1, 3, *grid.shape)
    assert torch.allclose(mm_to_voxel_field(voxel_to_mm_field(u, grid), grid), u, atol=1e-5)
    # one voxel along array axis 2 (= i) is spacing[0] mm along the first direction column
    unit = torch.zeros(1, 3, 1, 1, 1)
    unit[0, 2] = 1.0
    d = voxel_to_mm_field(unit, grid)[0, :, 0, 0, 0].numpy()
    assert np.allclose(d, grid.direction_matrix[:, 0] * grid.spacing[0], atol=1e-6)


def test_resizing_a_translation_keeps_it_in_millimetres():
    grid = oblique_grid()
    coarse = grid.with_size((7, 5, 4))
    d = torch.tensor([3.0, -1.0, 2.0]).view(1, 3, 1, 1, 1).expand(1, 3, *coarse.shape)
    u_coarse = mm_to_voxel_field(d.contiguous(), coarse)
    u_fine = resize_voxel_field(u_coarse, grid.shape)
    back = voxel_to_mm_field(u_fine, grid)
    assert torch.allclose(back, d.mean(dim=(2, 3, 4), keepdim=True).expand_as(back), atol=1e-4)


def test_field_image_round_trip(tmp_path):
    grid = oblique_grid()
    d = torch.randn(1, 3, *grid.shape)
    image = mm_field_to_image(d, grid)
    assert image.GetPixelID() == sitk.sitkVectorFloat64 and image.GetSize() == grid.size
    assert torch.allclose(image_to_mm_field(image, CPU), d, atol=1e-6)
    for name in ("field.nii.gz", "field.nrrd", "field.mha", "field.h5"):
        write_field(image, tmp_path / name)
        back = read_field(tmp_path / name)
        assert Grid.from_image(back).same_as(grid)
        assert np.allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image), atol=1e-6), name


@pytest.mark.parametrize("interpolator, mode", [(sitk.sitkLinear, "bilinear"), (sitk.sitkNearestNeighbor, "nearest")])
def test_resampling_through_a_field_matches_simpleitk(interpolator, mode):
    """Different grids, oblique directions, anisotropic spacing, a random smooth field."""
    rng = np.random.default_rng(0)
    fixed_grid = Grid((24, 20, 14), (1.5, 1.2, 2.5), (-5.0, 3.0, 10.0), oblique_direction((10, 5, -15)))
    moving_grid = Grid((26, 30, 20), (1.3, 1.0, 1.7), (0.0, 0.0, 0.0), oblique_direction((-5, 12, 20)))
    # centre the moving box on the fixed one, shifted by a few mm
    origin = fixed_grid.center() + np.array([2.0, -3.0, 1.0]) - moving_grid.index_to_physical @ ((np.asarray(moving_grid.size) - 1) / 2)
    moving = make_image(rng.normal(size=moving_grid.shape).astype(np.float32), moving_grid.spacing, tuple(origin),
                        moving_grid.direction)
    coarse = torch.from_numpy(rng.uniform(-4, 4, (1, 3, 3, 3, 3)).astype(np.float32))
    d = torch.nn.functional.interpolate(coarse, size=fixed_grid.shape, mode="trilinear", align_corners=True)
    field = mm_field_to_image(d, fixed_grid)
    reference = sitk.Resample(moving, fixed_grid.reference_image(), sitk.DisplacementFieldTransform(sitk.Image(field)),
                              interpolator, -7.0, sitk.sitkFloat32)
    ours = resample_through_field(torch.from_numpy(sitk.GetArrayFromImage(moving))[None, None], Grid.from_image(moving),
                                  fixed_grid, d, mode, -7.0)[0, 0].numpy()
    ref = sitk.GetArrayFromImage(reference)
    inside = (ref != -7.0) & (ours != -7.0)
    assert inside.mean() > 0.5
    assert np.mean(ours != -7.0) == pytest.approx(np.mean(ref != -7.0), abs=0.01)  # same outside region
    if mode == "bilinear":
        assert np.abs(ours[inside] - ref[inside]).max() < 1e-3
    else:  # nearest: rounding at exact half-voxel ties may differ on a handful of voxels
        assert np.mean(ours[inside] == ref[inside]) > 0.995
