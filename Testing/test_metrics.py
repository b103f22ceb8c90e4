"""The scoring module (voxelopt.metrics): one rule for Dice and HD95, Jacobian statistics."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from voxelopt.metrics import MAX_LABEL, jacobian_determinant, jacobian_statistics, label_metrics, registration_label_metrics
from voxelopt import metrics


def test_labels_scored_are_those_of_fixed_and_moving_and_a_lost_label_scores_zero():
    fixed = np.zeros((4, 6, 8), np.int16)
    fixed[0, :2] = 1  # 16 voxels
    fixed[2, :2, :2] = 2
    fixed[3, 5, 7] = 4  # only in fixed: not scored
    fixed[3, 5, 6] = -1  # negative values are not labels
    moving = np.zeros((5, 5, 5), np.int16)  # another grid: only its labels matter
    moving[0, 0, 0], moving[1, 1, 1], moving[2, 2, 2] = 1, 2, 3  # label 3 only in moving: not scored
    warped = np.zeros_like(fixed)
    warped[0, :1] = 1  # 8 voxels, all inside fixed's label 1; label 2 is lost
    warped[1, 1, 1] = 5  # only in warped: not scored
    metrics = label_metrics(fixed, moving, warped, (2.0, 1.0, 1.0))
    assert metrics["labels"] == [1, 2] and metrics["labels_lost"] == [2]
    assert metrics["dice"] == {"1": pytest.approx(2 * 8 / 24), "2": 0.0}
    assert metrics["dice_mean"] == pytest.approx((2 * 8 / 24) / 2)
    diagonal = np.sqrt(8.0 ** 2 + 6 ** 2 + 8 ** 2)  # the fixed box in mm
    assert metrics["hd95_mm"]["2"] == pytest.approx(diagonal)
    assert metrics["hd95_mm_mean"] == pytest.approx((metrics["hd95_mm"]["1"] + diagonal) / 2)


def test_tensor_inputs_give_the_array_result():
    rng = np.random.default_rng(0)
    fixed = rng.integers(0, 4, (12, 10, 9)).astype(np.int32)
    warped = rng.integers(0, 4, (12, 10, 9)).astype(np.uint16)  # a dtype torch cannot hold
    arrays = label_metrics(fixed, fixed, warped, (1.0, 2.0, 3.0))
    tensors = label_metrics(torch.from_numpy(fixed), torch.from_numpy(fixed).float(),
                            torch.from_numpy(warped.astype(np.float32)), (1.0, 2.0, 3.0), device=torch.device("cpu"))
    assert tensors == arrays
    for label in (1, 2, 3):
        f, w = fixed == label, warped == label
        assert arrays["dice"][str(label)] == pytest.approx(2 * (f & w).sum() / (f.sum() + w.sum()))


@pytest.mark.parametrize("dtype, offset", [(np.uint16, 0), (np.uint16, 40000), (np.uint32, 0), (np.uint32, 3_000_000_000)])
def test_unsigned_label_maps_score_as_their_values(dtype, offset):
    """Unsigned 16/32-bit maps are read through the signed type of the same width when their
    labels fit it (no copy), and widened when they do not: the scores are those of the int64 maps."""
    rng = np.random.default_rng(1)
    fixed, warped = (rng.integers(0, 4, (12, 10, 9)) for _ in range(2))
    shifted = [np.where(a > 0, a + offset, 0) for a in (fixed, warped)]
    if offset > MAX_LABEL:  # beyond what the scorer takes, read as a wider type: the clear error
        with pytest.raises(ValueError, match="label values above"):
            label_metrics(*[a.astype(dtype) for a in (shifted[0], shifted[0], shifted[1])], (1.0, 2.0, 3.0))
        return
    expected = label_metrics(*[a.astype(np.int64) for a in (shifted[0], shifted[0], shifted[1])], (1.0, 2.0, 3.0))
    got = label_metrics(*[a.astype(dtype) for a in (shifted[0], shifted[0], shifted[1])], (1.0, 2.0, 3.0))
    assert got == expected and len(got["labels"]) == 3


def _reference_hd95(a, b, spacing):
    """The former definition: distance transforms of the surfaces' complements, on the full grid."""
    structure = ndimage.generate_binary_structure(3, 1)
    surface_a = a & ~ndimage.binary_erosion(a, structure=structure, border_value=0)
    surface_b = b & ~ndimage.binary_erosion(b, structure=structure, border_value=0)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return np.percentile(np.concatenate([to_b, to_a]), 95)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_agrees_with_the_distance_transform_definition_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    shape, spacing = (24, 28, 20), tuple(rng.uniform(0.5, 3.0, 3))

    def blobs():  # smoothed noise, thresholded into three labels of irregular shape, some touching the border
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
        return np.digitize(noise, np.quantile(noise, [0.45, 0.65, 0.85])).astype(np.int32)

    fixed, warped = blobs(), blobs()
    metrics = label_metrics(fixed, fixed, warped, spacing)
    assert metrics["labels"] == [1, 2, 3]
    for label in metrics["labels"]:
        expected = _reference_hd95(fixed == label, warped == label, spacing)
        assert metrics["hd95_mm"][str(label)] == pytest.approx(expected, rel=1e-9)
        assert expected > 0


def test_hd95_of_offset_cubes_in_mm():
    a = np.zeros((30, 30, 30), np.int32)
    b = np.zeros((30, 30, 30), np.int32)
    a[10:20, 10:20, 10:20] = 1
    b[10:20, 10:20, 13:23] = 1  # shifted 3 voxels along x
    # x spacing 2 mm: every surface point is within 6 mm; most faces are at 0 mm or exactly 6 mm
    assert label_metrics(a, a, b, (1.0, 1.0, 2.0))["hd95_mm"] == {"1": pytest.approx(6.0)}
    same = label_metrics(a, a, a.copy(), (1.0, 1.0, 1.0))
    assert same["dice_mean"] == 1.0 and same["hd95_mm_mean"] == 0.0


def test_registration_label_metrics_scores_before_and_after_on_the_same_labels():
    fixed = np.zeros((20, 20, 20), np.int32)
    fixed[5:15, 5:15, 5:15] = 1
    fixed[0:3, 0:3, 0:3] = 2
    initial = np.roll(fixed, 4, axis=2)
    initial[initial == 2] = 0  # the initial alignment leaves label 2 outside the fixed box
    metrics = registration_label_metrics(fixed, fixed, initial, fixed.copy(), (1.0, 1.0, 1.0))
    assert metrics["labels"] == [1, 2] and metrics["dice_mean"] == 1.0 and metrics["hd95_mm_mean"] == 0.0
    assert metrics["dice_initial_mean"] == pytest.approx((2 * 600 / 2000) / 2)
    assert metrics["hd95_mm_initial_mean"] > np.sqrt(3 * 20.0 ** 2) / 2


def test_no_common_label_gives_nan_means():
    a = np.ones((4, 4, 4), np.int32)
    metrics = label_metrics(a, 2 * a, a, (1.0, 1.0, 1.0))
    assert metrics["labels"] == [] and np.isnan(metrics["dice_mean"]) and np.isnan(metrics["hd95_mm_mean"])


def test_jacobian_of_linear_fields():
    shape = (10, 12, 14)
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    u = torch.stack([0.1 * zz, -0.2 * yy, 0.3 * xx])[None]  # diagonal stretch
    assert torch.allclose(jacobian_determinant(u), torch.full(shape, 1.1 * 0.8 * 1.3), atol=1e-5)
    shear = torch.stack([0.5 * yy, torch.zeros_like(yy), torch.zeros_like(yy)])[None]
    assert torch.allclose(jacobian_determinant(shear), torch.ones(shape), atol=1e-5)
    fold = torch.stack([-2.0 * zz, torch.zeros_like(zz), torch.zeros_like(zz)])[None]
    assert torch.allclose(jacobian_determinant(fold), torch.full(shape, -1.0), atol=1e-5)


def test_jacobian_statistics():
    jac = np.ones((10, 10, 10))
    stats = jacobian_statistics(jac)
    assert stats["sdlogj"] == 0.0 and stats["folding_percent"] == 0.0
    jac[5, 5, 5] = -1.0
    jac[4, 4, 4] = 2.0
    stats = jacobian_statistics(jac)
    assert stats["folding_percent"] == pytest.approx(0.1)
    inner = jac[2:-2, 2:-2, 2:-2]
    assert stats["sdlogj"] == pytest.approx(np.log(inner + 3).std())
    assert stats["sdlogj_plain"] == pytest.approx(np.log(inner[inner > 0]).std())


def test_one_scorer_gives_each_warped_map_the_scores_of_label_metrics():
    """The scorer counts only inside the labelled box of the fixed and the warped map: warped labels
    outside the fixed labels' box, a lost label and an empty map must score as the full count does."""
    from voxelopt.metrics import LabelScorer

    rng = np.random.default_rng(7)
    fixed = np.zeros((30, 28, 26), dtype=np.uint8)
    fixed[8:16, 6:14, 5:12] = 1
    fixed[12:20, 14:22, 10:18] = 2
    fixed[3:6, 3:6, 3:6] = 3
    moving = fixed.copy()
    moving[0, 0, 0] = 4  # present in the moving map only: not scored
    shifted = np.roll(fixed, (6, -5, 7), axis=(0, 1, 2))  # label 2 partly outside the fixed labels' box
    lost = np.where(fixed == 3, 0, fixed)
    noisy = np.where(rng.random(fixed.shape) < 0.05, 2, fixed).astype(np.uint8)
    scorer = LabelScorer(fixed, moving, (1.5, 1.0, 2.0))
    for warped in (shifted, lost, noisy, np.zeros_like(fixed)):
        assert scorer.score(warped) == label_metrics_reference(fixed, moving, warped, (1.5, 1.0, 2.0))


def label_metrics_reference(fixed, moving, warped, spacing):
    """The scores counted on the whole grid (plain numpy Dice) with label_metrics' HD95."""
    out = label_metrics(fixed, moving, warped, spacing)
    for label in out["labels"]:
        f, w = fixed == label, warped == label
        assert out["dice"][str(label)] == pytest.approx(2.0 * np.count_nonzero(f & w) / (f.sum() + w.sum()))
    return out


def test_surface_voxels_are_grouped_by_label_in_their_order():
    """Grouping by one stable sort gives each label's voxels as a mask would, in their order;
    a label without voxels gets an empty group."""
    rng = np.random.default_rng(11)
    voxels = rng.integers(0, 50, (5000, 3))
    values = rng.choice([3, 7, 1, 250], 5000)
    groups = metrics._by_label(voxels, values, [1, 3, 5, 7, 250])
    for label in (1, 3, 7, 250):
        np.testing.assert_array_equal(groups[label], voxels[values == label])
    assert groups[5].shape == (0, 3)


def test_the_coarse_box_is_that_of_the_coarse_voxels():
    """``_coarse_box`` of two voxel sets' joint box is the joint box of their coarse voxels (index //
    COARSE_FACTOR), negative indices included: the distance transforms on the coarse grid reuse it."""
    from voxelopt import compiled

    rng = np.random.default_rng(12)
    for _ in range(100):
        a = rng.integers(-7, 90, (int(rng.integers(1, 40)), 3))
        b = rng.integers(-3, 97, (int(rng.integers(1, 40)), 3))
        low, shape = metrics._coarse_box(*compiled.joint_box(a, b))
        expected_low, expected_shape = compiled.joint_box(a // metrics.COARSE_FACTOR, b // metrics.COARSE_FACTOR)
        assert np.array_equal(low, expected_low) and shape == expected_shape
