"""The physical-geometry contract: grids, voxel/mm fields and resampling against SimpleITK."""

import subprocess
import sys
from pathlib import Path

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


def test_grid_points_match_simpleitk():
    grid = oblique_grid()
    image = grid.reference_image()
    points = grid.physical_points()
    for index in ((0, 0, 0), (19, 3, 7), (5, 15, 11)):
        i, j, k = index
        assert np.allclose(points[:, k, j, i], image.TransformIndexToPhysicalPoint(index))
        assert np.allclose(grid.point(index), image.TransformIndexToPhysicalPoint(index))


def test_crop_and_resize_follow_the_interpolate_convention():
    """A crop resized with F.interpolate(align_corners=False) lies on grid.crop(...).with_size(...),
    and features on a grid go back onto an image's grid exactly where the grids coincide."""
    from voxelopt.geometry import features_to_image

    grid = oblique_grid((10, 8, 6), (2.0, 1.0, 3.0))
    resized = grid.crop((2, 0, 1), (6, 8, 4)).with_size((3, 4, 2))
    # resized voxel (0, 0, 0) sits at crop index 0.5 * size / out - 0.5, i.e. grid index start + that
    assert np.allclose(resized.origin, grid.point(np.add((2, 0, 1), [0.5, 0.5, 0.5])))
    assert np.allclose(resized.spacing, (4.0, 2.0, 6.0))
    values = torch.arange(10 * 8 * 6, dtype=torch.float32).reshape(1, 10, 8, 6)  # (C, i, j, k)
    back = features_to_image(values, grid, grid.reference_image())
    assert torch.allclose(back[0], values[0].permute(2, 1, 0), atol=1e-3)


def test_sheared_or_scaled_directions_are_refused_even_with_unit_determinant():
    from voxelopt.errors import InputError
    from voxelopt.geometry import check_image

    good = make_image(np.zeros((4, 5, 6), np.float32), direction=oblique_direction())
    check_image(good, "fixed image")
    shear = (1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # det 1, not orthonormal
    sheared = make_image(np.zeros((4, 5, 6), np.float32))
    sheared.SetDirection(shear)
    with pytest.raises(InputError, match="fixed image has an invalid direction matrix: its axes are not orthonormal"):
        check_image(sheared, "fixed image")
    with pytest.raises(InputError, match="moving image must be a scalar image"):
        check_image(sitk.Image((4, 5, 6), sitk.sitkVectorFloat32, 2), "moving image")
    nan = make_image(np.full((4, 5, 6), np.nan, np.float32))
    check_image(nan, "fixed image")
    with pytest.raises(InputError, match="120 NaN or infinite"):
        check_image(nan, "fixed image", values=True)


def test_window_hu_is_the_same_for_numpy_and_torch():
    from voxelopt.geometry import window_hu

    hu = np.array([-2000.0, -800.0, -150.0, 500.0, 3000.0], np.float32)
    expected = np.array([0.0, 0.0, 0.5, 1.0, 1.0], np.float32)
    assert np.allclose(window_hu(hu, (-800, 500)), expected)
    assert torch.allclose(window_hu(torch.from_numpy(hu), (-800, 500)), torch.from_numpy(expected))


def test_grids_and_checks_import_without_torch():
    """The torch-free part of the geometry package (grids, checks, HU window) imports with torch
    blocked (the package's own parent __init__ is bypassed: it imports the torch pipeline)."""
    src = Path(__file__).resolve().parents[1] / "VoxelOptLib" / "src" / "voxelopt"
    code = (
        "import sys, types; sys.modules['torch'] = None; pkg = types.ModuleType('voxelopt'); "
        f"pkg.__path__ = [{str(src)!r}]; sys.modules['voxelopt'] = pkg; "
        "from voxelopt.geometry import Grid, check_image, window_hu; "
        "print(Grid((2, 2, 2), (1.0,) * 3, (0.0,) * 3, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)).with_spacing(2.0).size)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1, 1, 1)"


@pytest.mark.parametrize("depth", [7, 8, 1])
@pytest.mark.parametrize("mode, padding, corners", [("bilinear", "border", False), ("nearest", "zeros", True)])
def test_grid_sample_spread_over_threads_gives_the_same_values(depth, mode, padding, corners):
    from voxelopt.geometry import grid_sample

    generator = torch.Generator().manual_seed(3)
    volume = torch.rand(1, 4, 9, 10, 11, generator=generator)
    grid = torch.rand(1, depth, 5, 6, 3, generator=generator) * 2.4 - 1.2  # some points outside
    expected = torch.nn.functional.grid_sample(volume, grid, mode=mode, padding_mode=padding, align_corners=corners)
    threads = torch.get_num_threads()
    try:
        for count in (3, 2, 1):  # 3 parts do not divide 7 or 8 slices: a padded last part
            torch.set_num_threads(count)
            out = grid_sample(volume, grid, mode=mode, padding_mode=padding, align_corners=corners)
            assert out.shape == expected.shape and out.is_contiguous()
            assert torch.equal(out, expected)
    finally:
        torch.set_num_threads(threads)


def _aligned_cases():
    """(source grid, target grid): network-style grids on an image's box (other voxel sizes,
    orientations, crops and pads), and grids where the fast path must decline."""
    from voxelopt.geometry import oriented_grid, padded_to_multiple

    image = Grid((23, 19, 14), (1.9, 2.1, 2.6), (-40.0, 12.0, 7.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)).reference_image()
    sagittal = sitk.DICOMOrient(image, "ASL")  # axes permuted and flipped against the network's
    oblique = Grid((17, 15, 11), (2.0, 1.7, 3.1), (5.0, -3.0, 2.0), oblique_direction()).reference_image()
    cases = []
    for img in (image, sagittal, oblique):
        target = Grid.from_image(img)
        for orientation, spacing in (("LAI", (2.2, 1.7, 1.35)), ("LPS", (1.9, 2.1, 2.6)), ("RAS", (3.3, 0.9, 2.0))):
            network = oriented_grid(img, orientation, spacing)
            cases.append((network, target, True))
            cases.append((padded_to_multiple(network.crop((3, 1, 2), np.subtract(network.size, (5, 2, 4))), 8), target, True))
            cases.append((network.with_size(np.maximum(1, np.asarray(network.size) // 2)), target, True))
        cases.append((target.lattice((0.3, 0.0, 0.0), (1.0, 1.0, 1.0), target.size), target, False))  # a shift of 0.3 voxel
        # a network-style output lattice: a third of the resolution, centred, not on F.interpolate's points
        cases.append((target.lattice((0.7, 1.1, 0.4), (2.9, 3.1, 2.6), np.maximum(2, np.asarray(target.size) // 3)), target, False))
    return cases


@pytest.mark.parametrize("case", range(len(_aligned_cases())))
def test_axis_aligned_resampling_matches_the_general_path(case):
    """The F.interpolate path and the separable path give the values of grid_sample with border
    values outside, for orientations, crops, pads and voxel sizes of network grids; the
    F.interpolate path declines other maps (shifted grids, lattices), which the separable path
    takes."""
    from voxelopt.geometry import resample_axis_aligned, resample_separable

    source, target, fast = _aligned_cases()[case]
    data = torch.rand((1, 3) + source.shape, generator=torch.Generator().manual_seed(case)) * 100
    expected = resample_through_field(data, source, target, None, default=None)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        separable = resample_separable(data.contiguous(memory_format=layout), source, target)
        assert separable.shape == expected.shape and separable.is_contiguous()
        assert (separable - expected).abs().max() < 1e-3  # float32 weights (grid_sample's coordinates too)
    out = resample_axis_aligned(data, source, target)
    if not fast:
        assert out is None
        return
    assert out is not None and out.shape == expected.shape and out.is_contiguous()
    channels_last = resample_axis_aligned(data.contiguous(memory_format=torch.channels_last_3d), source, target)
    assert channels_last.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(channels_last, out)
    assert (out - expected).abs().max() < 1e-3  # float32 interpolation weights on values up to 100


def test_separable_resampling_declines_a_rotation():
    """Grids whose axes are turned against each other (not a permutation) go to grid_sample."""
    from voxelopt.geometry import resample_separable

    image = Grid((12, 10, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    oblique = Grid((12, 10, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), oblique_direction())
    assert resample_separable(torch.rand((1, 2) + oblique.shape), oblique, image) is None


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_replicate_pad_keeps_the_memory_format(layout):
    from voxelopt.geometry import replicate_pad

    data = torch.rand(1, 3, 4, 5, 6, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=layout)
    pad = (2, 0, 1, 3, 0, 2)
    out = replicate_pad(data, pad, layout)
    assert torch.equal(out, torch.nn.functional.pad(data.contiguous(), pad, mode="replicate"))
    assert out.is_contiguous(memory_format=layout)


def test_a_crop_of_a_network_array_is_the_array_resampled_on_the_crop():
    """crop_array takes a crop's values (air past the grid) from the whole grid's array: equal to
    resampling the image on the crop, for a crop inside, one padded past the far end, and a
    sagittal image; a grid that is not a crop is refused."""
    from voxelopt.geometry import crop_array, network_array, oriented_grid, padded_to_multiple

    rng = np.random.default_rng(4)
    image = make_image(rng.normal(0.0, 300.0, (14, 19, 23)).astype(np.float32), spacing=(1.9, 2.1, 2.6))
    for img in (image, sitk.DICOMOrient(image, "ASL")):
        grid = oriented_grid(img, "LAI", (2.2, 1.7, 1.35))
        whole = network_array(img, grid, CPU)
        for part in (grid.crop((3, 1, 2), (10, 12, 20)), padded_to_multiple(grid.crop((2, 4, 5), np.subtract(grid.size, (4, 5, 6))), 8)):
            expected = network_array(img, part, CPU)
            assert torch.allclose(crop_array(whole, grid, part), expected, atol=1e-3)
        with pytest.raises(ValueError, match="crop of the grid"):
            crop_array(whole, grid, grid.with_size(np.asarray(grid.size) // 2))


@pytest.mark.parametrize("seed", range(6))
def test_overlap_fraction_is_that_of_a_nearest_neighbour_resampling_of_ones(seed):
    """The overlap check maps the points of a coarse fixed grid into the moving image's index
    space; it counts what ``sitk.Resample`` of an all-ones moving image (0 outside) would, on
    oblique anisotropic grids, with and without an affine alignment."""
    from voxelopt.geometry.resampling import overlap_fraction, resample_image

    rng = np.random.default_rng(seed)
    moving = sitk.Image([int(n) for n in rng.integers(10, 60, 3)], sitk.sitkInt16)
    moving.SetSpacing(tuple(rng.uniform(0.5, 3.0, 3)))
    moving.SetOrigin(tuple(rng.uniform(-50.0, 50.0, 3)))
    moving.SetDirection(oblique_direction(tuple(rng.uniform(-40, 40, 3))))
    size, spacing = rng.integers(10, 80, 3), rng.uniform(0.5, 3.0, 3)
    direction = oblique_direction(tuple(rng.uniform(-40, 40, 3)))
    centre = np.asarray(moving.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in moving.GetSize()]))
    corner = centre - np.reshape(direction, (3, 3)) @ ((size - 1) / 2 * spacing) + rng.uniform(-15.0, 15.0, 3)
    fixed_grid = Grid(tuple(int(n) for n in size), tuple(spacing), tuple(corner), direction)  # partly overlapping
    alignment = np.eye(4)
    alignment[:3, :3] = np.asarray(oblique_direction(tuple(rng.uniform(-20, 20, 3)))).reshape(3, 3) * rng.uniform(0.9, 1.1)
    alignment[:3, 3] = rng.uniform(-20.0, 20.0, 3)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    coarse = fixed_grid.with_size(np.minimum(fixed_grid.size, 32))
    overlaps = []
    for matrix in (None, alignment):
        expected = sitk.GetArrayFromImage(resample_image(ones, coarse, matrix, sitk.sitkNearestNeighbor, 0)).mean()
        assert overlap_fraction(fixed_grid, moving, matrix) == pytest.approx(float(expected), abs=1e-12)
        overlaps.append(expected)
    assert 0.0 < min(overlaps) and min(overlaps) < 1.0  # partial overlaps: the border decides


def test_the_solver_field_composed_with_an_affine_alignment_is_the_points_mapped():
    """``GridField.from_solver``: d(x) = T(x + u(x)) - x on an oblique field grid, for a linear T
    (its affine part added per axis, not from an array of points) and a translation."""
    from voxelopt.outputs import GridField

    working = oblique_grid(size=(10, 8, 6), spacing=(3.0, 2.0, 6.0))
    field_grid = working.scaled(2.0)
    u = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 3, 6, 8, 10)).astype(np.float32))
    for matrix in (np.array([[1.04, 0.06, -0.03], [-0.05, 0.97, 0.02], [0.01, -0.04, 1.02]]), np.eye(3)):
        initial = np.eye(4)
        initial[:3, :3], initial[:3, 3] = matrix, (4.0, -7.0, 2.5)
        field = GridField.from_solver(u, working, field_grid, initial)
        u_mm = GridField.from_solver(u, working, field_grid, np.eye(4)).data[0].double().numpy()
        x = field_grid.physical_points()
        expected = np.einsum("rc,czyx->rzyx", matrix, x + u_mm) + initial[:3, 3].reshape(3, 1, 1, 1) - x
        assert field.grid == field_grid and field.data.dtype == torch.float32
        assert np.abs(field.data[0].double().numpy() - expected).max() < 1e-4


def test_a_grid_holds_the_blocks_of_its_own_voxels_only():
    """Grid.holds (evaluate's rule for fixed labels cropped from their image's grid): crops of an
    oblique grid, itself, and not a block reaching past it, one shifted by a fraction of a voxel,
    one of another spacing or one turned."""
    grid = Grid((20, 16, 12), (4.0, 4.0, 5.0), (10.0, -20.0, 30.0), oblique_direction((10, -5, 20)))
    assert grid.holds(grid) and grid.holds(grid.crop((3, 0, 2), (10, 16, 4))) and grid.holds(grid.crop((0, 0, 11), (20, 16, 1)))
    assert not grid.holds(grid.crop((15, 0, 0), (6, 16, 12))) and not grid.holds(grid.crop((-1, 0, 0), (5, 5, 5)))
    assert not grid.holds(grid.lattice((2.5, 0.0, 0.0), (1.0, 1.0, 1.0), (5, 5, 5)))
    assert not grid.holds(grid.lattice((2.0, 0.0, 0.0), (0.5, 1.0, 1.0), (5, 5, 5)))
    assert not grid.holds(Grid((5, 5, 5), grid.spacing, grid.origin, oblique_direction((0, 0, 30))))
    assert not grid.crop((3, 0, 2), (10, 16, 4)).holds(grid)


def test_a_grid_covers_another_within_half_a_voxel_of_its_outer_centres():
    """Grid.covers (voxelopt evaluate's check of a field against the fixed labels): the same box,
    a finer grid of the same box, a shift within half a voxel along an oblique axis, and not
    beyond it or for a box elsewhere."""
    grid = Grid((20, 16, 12), (4.0, 4.0, 5.0), (10.0, -20.0, 30.0), oblique_direction((10, -5, 20)))
    assert grid.covers(grid) and grid.covers(grid.with_spacing(1.0)) and grid.with_spacing(1.0).covers(grid)
    axis = grid.direction_matrix[:, 2]  # the k axis, 5 mm voxels
    for shift_mm, inside in ((2.4, True), (-2.4, True), (2.6, False), (-2.6, False), (300.0, False)):
        moved = Grid(grid.size, grid.spacing, tuple(np.asarray(grid.origin) + shift_mm * axis), grid.direction)
        assert grid.covers(moved) == inside, shift_mm
