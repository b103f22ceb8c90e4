"""Masks in the cost: the solver's masked cost, the scanned-region mask and user masks end to end."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from testdata import make_image, smooth_random_volume
from voxelopt import InputError, RegistrationConfig, register
from voxelopt.geometry import Grid, image_to_tensor, resample_image
from voxelopt.masks import _box_on_grid, clear_padding, scanned_box, scanned_thickness, user_mask
from voxelopt.solver import cost_volume, displacement_entropy, label_offsets, mask_cost_, solve_pyramid
from test_solver import crop_shifted, smooth_features

CPU = torch.device("cpu")


def masked_and_plain_cost(fixed_mask=None, moving_mask=None, k=1):
    g = torch.Generator().manual_seed(0)
    fixed, moving = torch.rand(1, 3, 10, 11, 12, generator=g), torch.rand(1, 3, 10, 11, 12, generator=g)
    offsets = label_offsets(k, CPU)
    plain = cost_volume(moving, fixed, offsets)
    return mask_cost_(plain.clone(), offsets, fixed_mask, moving_mask), plain


def test_fixed_mask_changes_the_cost_only_inside_and_makes_it_flat_there():
    mask = torch.ones(10, 11, 12)
    mask[3:6, 2:5, 4:9] = 0.0
    mask[7, 7, 7] = 0.5
    masked, plain = masked_and_plain_cost(fixed_mask=mask)
    outside = mask == 1
    assert torch.equal(masked[:, outside], plain[:, outside])  # bit for bit
    inside = mask == 0
    assert not torch.allclose(masked[:, inside], plain[:, inside])
    assert torch.equal(masked[:, inside], plain.mean(0)[inside].expand(27, -1))  # every offset the same
    half = (plain[:, 7, 7, 7] + plain[:, 7, 7, 7].mean()) / 2
    assert torch.allclose(masked[:, 7, 7, 7], half, atol=1e-6)
    # maximal entropy where nothing is known
    entropy = displacement_entropy(masked, beta=10.0)
    assert torch.allclose(entropy[inside], torch.full_like(entropy[inside], math.log(27)), atol=1e-5)


def test_moving_mask_changes_only_the_offsets_that_reach_it():
    mask = torch.ones(10, 11, 12)
    mask[5, 5, 5] = 0.0
    masked, plain = masked_and_plain_cost(moving_mask=mask)
    offsets = label_offsets(1, CPU).long().tolist()
    changed = (masked != plain).nonzero().tolist()
    expected = sorted([label, 5 - dz, 5 - dy, 5 - dx] for label, (dz, dy, dx) in enumerate(offsets))
    assert sorted(changed) == expected  # x + o lands on the masked moving voxel, nothing else


def test_no_mask_leaves_the_cost_untouched():
    masked, plain = masked_and_plain_cost()
    assert torch.equal(masked, plain)


def test_moving_mask_over_metal_recovers_the_shift():
    shift = (2, 0, -1)
    moving, fixed = crop_shifted(smooth_features((40, 36, 44)), (40, 36, 44), shift)
    metal = (slice(None), slice(None), slice(17, 23), slice(15, 21), slice(18, 24))
    moving[metal] = 3.0  # a bright blob that is not in the fixed image
    mask = torch.ones((1, 1) + tuple(moving.shape[2:]))
    mask[metal] = 0.0
    config = RegistrationConfig(levels=3)
    truth = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1)
    # the fixed voxels that map into the blob (p + shift inside it), and 4 voxels around them
    region = (slice(None), slice(None), slice(11, 25), slice(11, 25), slice(15, 29))

    def error(field):
        return (field - truth).norm(dim=1, keepdim=True)[region].mean().item()

    without = error(solve_pyramid(moving, fixed, config).field)
    with_mask = error(solve_pyramid(moving, fixed, config, moving_mask=mask).field)
    print(f"\nmetal blob: mean shift error {without:.2f} voxels without the mask, {with_mask:.2f} with it")
    assert with_mask < 0.95 * without  # measured: 0.80 vs 0.86 voxels


# ------------------------------------------------------------------ scanned region and user masks
def padding_slabs(array: np.ndarray, window_low=None) -> np.ndarray:
    """The voxels :func:`clear_padding` sets to 0 (the image's padding slabs), as a bool map."""
    kept = np.ones(array.shape, dtype=np.uint8)
    clear_padding(kept, array, window_low)
    return kept == 0


def test_padding_slabs_are_constant_border_planes_only():
    array = np.full((12, 8, 9), 40.0, dtype=np.float32)
    array[:, 2:5, 3] = -1024.0  # air inside the scan: not a slab
    array[:3] = -1024.0
    array[10:] = -1024.0
    array[6] = -1024.0  # an all-air plane inside the scan is kept
    array[:, :, 8] = -1024.0  # a slab along x
    slabs = padding_slabs(array)
    expected = np.zeros(array.shape, dtype=bool)
    expected[:3] = expected[10:] = True
    expected[:, :, 8] = True
    assert np.array_equal(slabs, expected)
    assert not padding_slabs(np.zeros((4, 4, 4))).any()
    # the padding value need not be the minimum: air noise or -3024 outside the reconstruction
    # circle lie below it inside the scan (one such voxel used to hide every slab)
    array[5, 4, 4] = -1025.0
    array[7, 0, 0] = -3024.0
    assert np.array_equal(padding_slabs(array), expected)
    # padding crossed by the reconstruction circle (-3024 outside it): a border plane of two values
    # below the HU window's low end is padding, and so is every plane holding only those two
    array[10:, 0, 0] = -3024.0
    assert np.array_equal(padding_slabs(array, window_low=-800.0), expected)
    assert padding_slabs(array).sum() < expected.sum()  # without the window: one value only
    assert padding_slabs(array, window_low=-2000.0).sum() < expected.sum()  # -1024 is inside that window
    # two values where one lies inside the window (tissue beside air) are scanned: the x border
    # planes hold 40 and -1024, and so does every plane along x
    array[10:, 0, 0] = -1024.0
    assert np.array_equal(padding_slabs(array, window_low=-800.0), expected)
    array[11, 0, 1] = 0.0  # a border plane holding three values is scanned, and so is what it covers
    scanned = ~padding_slabs(array, window_low=-800.0)
    assert scanned[10:, :, :8].all() and not scanned[:3].any() and not scanned[:, :, 8].any()


def test_scanned_thickness_is_the_typical_line_through_the_scanned_region_over_its_extent():
    rng = np.random.default_rng(0)
    box = np.full((20, 30, 40), -1024.0, dtype=np.float32)
    box[5:15, 3:27, 4:36] = rng.normal(40.0, 10.0, (10, 24, 32))
    assert scanned_thickness(box) == (1.0, 1.0, 1.0)  # a box, padded or not
    assert scanned_thickness(box[5:15, 3:27, 4:36]) == (1.0, 1.0, 1.0)
    assert scanned_thickness(np.zeros((4, 5, 6))) == (1.0, 1.0, 1.0)  # nothing scanned
    # a slab 4 planes thick along z, tilted in the z-y plane: its box along z holds the tilt (18
    # planes), and a line along y crosses it over 8 voxels of the 30 it spans
    tilted = np.full((40, 34, 20), -1024.0, dtype=np.float32)
    for y in range(30):
        tilted[y // 2 + 2:y // 2 + 6, y + 2, :] = rng.normal(40.0, 10.0, (4, 20))
    assert scanned_thickness(tilted) == pytest.approx((4 / 18, 8 / 30, 1.0))
    # lines are read at every s-th position across the axis on larger images: the same fractions
    large = np.repeat(np.repeat(tilted, 4, axis=2), 2, axis=1)  # 40 x 68 x 80: 5440 lines along z
    assert scanned_thickness(large) == pytest.approx((4 / 18, 16 / 60, 1.0))


@pytest.mark.parametrize("oblique", [False, True])
def test_scanned_box_on_a_grid_equals_resampling_the_image_sized_mask(oblique):
    """The scanned region is sampled per axis (no image-sized mask); the result is what SimpleITK's
    linear resampling of the full indicator image gives, also through an oblique alignment onto a
    grid reaching past the image."""
    array = np.full((20, 18, 16), -1000.0, dtype=np.float32)
    array[5:14, 2:17, 3:12] = 30.0
    image = make_image(array, spacing=(1.3, 1.1, 2.0), origin=(4.0, -3.0, 7.0))
    assert scanned_box(array) == ((5, 13), (2, 16), (3, 11))
    alignment = None
    if oblique:
        alignment = np.eye(4)
        alignment[:3, :3] = np.asarray(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.15).GetMatrix()).reshape(3, 3)
        alignment[:3, 3] = (2.5, -1.0, 3.0)
    grid = Grid.from_image(image).with_spacing(1.7).crop((-2, -1, -3), (14, 16, 24))
    indicator = sitk.GetImageFromArray((~padding_slabs(array)).astype(np.float32))
    indicator.CopyInformation(image)
    expected = image_to_tensor(resample_image(indicator, grid, alignment, sitk.sitkLinear, 0.0), CPU)
    sampled = _box_on_grid(image, scanned_box(array), grid, alignment, CPU)
    assert 0.05 < float(expected.mean()) < 0.95  # partly inside, with fractional borders
    assert torch.allclose(sampled, expected, atol=1e-5)


def test_user_mask_is_checked_and_resampled_onto_the_image_grid():
    image = make_image(np.zeros((6, 8, 10), np.float32), spacing=(1.0, 1.0, 2.0))
    half = make_image(np.zeros((3, 8, 10), np.uint8), spacing=(1.0, 1.0, 4.0), origin=(0.0, 0.0, 1.0))  # same box
    half_array = sitk.GetArrayFromImage(half)
    half_array[1] = 1
    labels = sitk.GetImageFromArray(half_array)
    labels.CopyInformation(half)
    use = user_mask(labels, image, "fixed mask")
    assert use.shape == (6, 8, 10) and use[2:4].all() and not use[:2].any() and not use[4:].any()
    with pytest.raises(InputError, match="fixed mask has no nonzero voxel"):
        user_mask(half, image, "fixed mask")
    with pytest.raises(InputError, match="moving mask must be a 3-D image"):
        user_mask(sitk.Image(5, 5, sitk.sitkUInt8), image, "moving mask")


def test_register_uses_the_masks_and_rejects_an_empty_one():
    rng_volume = smooth_random_volume((24, 28, 32), seed=4)
    fixed = make_image(rng_volume, spacing=(2.0, 2.0, 2.0))
    moving = make_image(np.roll(rng_volume, 2, axis=2), spacing=(2.0, 2.0, 2.0))
    mask_array = np.ones(rng_volume.shape, np.uint8)
    mask_array[:, :, :12] = 0
    mask = make_image(mask_array, spacing=(2.0, 2.0, 2.0))
    config = RegistrationConfig(levels=2, device="cpu", init="none")
    plain = sitk.GetArrayFromImage(register(fixed, moving, config).field)
    result = register(fixed, moving, config, fixed_mask=mask)
    masked = sitk.GetArrayFromImage(result.field)
    assert not np.allclose(plain, masked, atol=1e-3)
    # metrics.json tells a masked run from an unmasked one: the share of voxels each mask keeps
    assert result.summary()["masks"] == {"fixed": pytest.approx(20 / 32)}
    assert register(fixed, moving, config).summary()["masks"] == {}
    with pytest.raises(InputError, match="moving mask has no nonzero voxel"):
        register(fixed, moving, config, moving_mask=make_image(0 * mask_array, spacing=(2.0, 2.0, 2.0)))
    # an image given as a mask (fractions, negative values) is refused as it is as labels, not
    # taken for "use every voxel"
    for image in (moving, make_image(rng_volume.astype(np.float32) - 0.5, spacing=(2.0, 2.0, 2.0))):
        with pytest.raises(InputError, match="fixed mask must hold non-negative integer labels.*image rather than"):
            register(fixed, moving, config, fixed_mask=image)


def test_the_masks_restrict_the_affine_stage_too(monkeypatch):
    import voxelopt.affine

    volume = smooth_random_volume((24, 28, 32), seed=5)
    fixed = make_image(volume, spacing=(2.0, 2.0, 2.0))
    moving = make_image(np.roll(volume, 2, axis=2), spacing=(2.0, 2.0, 2.0))
    mask_array = np.zeros(volume.shape, np.uint8)
    mask_array[4:20, 4:24, 4:28] = 1
    seen = {}
    estimate = voxelopt.affine.estimate_affine

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return estimate(*args, **kwargs)

    monkeypatch.setattr(voxelopt.affine, "estimate_affine", spy)
    register(fixed, moving, RegistrationConfig(levels=2, device="cpu", init="affine"),
             fixed_mask=make_image(mask_array, spacing=(2.0, 2.0, 2.0)))
    assert np.array_equal(sitk.GetArrayFromImage(seen["fixed_mask"]), mask_array) and seen["moving_mask"] is None


def test_a_mask_with_nan_voxels_is_refused():
    """A floating-point mask with a NaN voxel is bad input, named as the mask (integer masks
    cannot hold one)."""
    image = sitk.GetImageFromArray(np.zeros((6, 7, 8), np.float32))
    values = np.ones((6, 7, 8), np.float32)
    values[2, 3, 4] = np.nan
    mask = sitk.GetImageFromArray(values)
    with pytest.raises(InputError, match="fixed mask .*NaN"):
        user_mask(mask, image, "fixed mask")
