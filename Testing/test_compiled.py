"""The compiled kernels (voxelopt.compiled, numba): when they are used, that the warp kernel warps
as SimpleITK does, and that the surface distances equal a KD-tree's. The warp kernel's agreement on registration fields is also tested with every streamed-warp
test of test_pipeline.py (parametrized by sampler)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from testdata import count_calls, make_image, oblique_direction, smooth_random_volume
import voxelopt
from scipy.spatial import cKDTree

from voxelopt import compiled, metrics, outputs
from voxelopt.geometry import Grid
from voxelopt.outputs import GridField, warp_image_itk, warp_images_streamed

pytest.importorskip("numba", reason="the compiled kernel needs numba (extra 'fast')")


def oblique_case(flip_field_axis: bool):
    """An int16 moving CT on its own grid, an oblique anisotropic fixed grid, and a smooth field of
    up to ~12 mm on a coarser grid of the fixed box's directions (the second axis reversed when
    ``flip_field_axis``: a negative diagonal of the fixed-to-field index map) that carries part
    of the fixed grid outside the moving image."""
    moving = make_image((smooth_random_volume((40, 44, 48), seed=4) * 4).astype(np.int16), (2.1, 1.7, 2.4),
                        (-5.0, 3.0, 1.0), oblique_direction((5, -8, 12)))
    fixed_grid = Grid((37, 33, 29), (1.9, 2.3, 2.7), (0.0, 0.0, 0.0), oblique_direction((25, 5, -10)))
    fixed_grid = Grid(fixed_grid.size, fixed_grid.spacing,
                      tuple(Grid.from_image(moving).center() - fixed_grid.index_to_physical @ (np.asarray(fixed_grid.size) / 2)),
                      fixed_grid.direction)
    field_grid = fixed_grid.with_spacing(5.0)
    if flip_field_axis:
        direction = np.asarray(field_grid.direction).reshape(3, 3) @ np.diag([1.0, -1.0, 1.0])
        last = field_grid.point([0, field_grid.size[1] - 1, 0])  # the same box, walked the other way along y
        field_grid = Grid(field_grid.size, field_grid.spacing, tuple(last), tuple(direction.ravel()))
    rng = np.random.default_rng(7)
    shape = field_grid.shape
    smooth = np.stack([torch.nn.functional.interpolate(torch.as_tensor(c)[None, None], size=shape, mode="trilinear",
                                                       align_corners=True)[0, 0].numpy()
                       for c in rng.normal(0.0, 6.0, (3, 3, 3, 3))], axis=-1) + 4.0
    field_image = field_grid.apply_to(sitk.GetImageFromArray(smooth.astype(np.float32), isVector=True))
    return moving, fixed_grid, GridField.from_image(field_image, torch.device("cpu"))


@pytest.mark.parametrize("flip_field_axis", [False, True])
@pytest.mark.parametrize("nearest", [False, True])
def test_the_kernel_warps_as_simpleitk_on_an_oblique_anisotropic_pair(flip_field_axis, nearest, monkeypatch):
    moving, fixed_grid, field = oblique_case(flip_field_axis)
    monkeypatch.setattr(outputs, "SLAB_VOXELS", 4 * fixed_grid.size[0] * fixed_grid.size[1])  # slabs of 4 slices
    calls = count_calls(monkeypatch, compiled, "warp_slab")
    lowest = float(sitk.GetArrayViewFromImage(moving).min())  # the default outside the image
    expected = sitk.GetArrayFromImage(warp_image_itk(moving, field, fixed_grid, nearest, lowest, None, None))
    warped = sitk.GetArrayFromImage(warp_images_streamed([moving], field, fixed_grid, [nearest], [lowest], None, None,
                                                         "compiled")[0])
    assert len(calls) == -(-fixed_grid.size[2] // 4)  # every slab by the kernel
    assert warped.dtype == np.int16
    assert 0.02 < np.mean(expected == lowest) < 0.9  # part of the grid lies outside the moving image
    assert np.mean(warped != expected) < 1e-3 and np.abs(warped.astype(int) - expected).max() <= (0 if nearest else 1)


def border_case(values: np.ndarray):
    """A one-slice moving image of ``values`` (1, 4, 5) and the fixed grid and zero field of the
    border test: fixed points every 0.29 moving voxels from 1.13 voxels before the first to
    beyond the last, along every axis."""
    moving = make_image(values, (1.0, 1.2, 0.9), (0.0, 0.0, 0.0))
    fixed_grid = Grid((24, 20, 8), (0.29 * 0.9, 0.29 * 1.2, 0.29 * 1.0), (-1.13 * 0.9, -1.13 * 1.2, -1.13),
                      tuple(np.eye(3).ravel()))
    field_grid = fixed_grid.with_spacing(2.0)
    zero = field_grid.apply_to(sitk.GetImageFromArray(np.zeros(field_grid.shape + (3,), np.float32), isVector=True))
    return moving, fixed_grid, GridField.from_image(zero, torch.device("cpu"))


def compiled_warp(moving, fixed_grid, field, nearest, default):
    return sitk.GetArrayFromImage(warp_images_streamed([moving], field, fixed_grid, [nearest], [default], None, None,
                                                       "compiled")[0])


@pytest.mark.parametrize("nearest", [False, True])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_the_kernel_keeps_itks_rules_at_the_image_border_and_on_a_single_slice(nearest, dtype):
    """Points on the last voxel, within half a voxel outside (the border value) and beyond (the
    default), along every axis, one of them a single slice: the kernel's clamping and flat
    indices against SimpleITK's resampling (no field: the points are the fixed grid's)."""
    rng = np.random.default_rng(11)
    moving, fixed_grid, field = border_case(rng.integers(-1000, 1000, (1, 4, 5)).astype(dtype))
    expected = sitk.GetArrayFromImage(warp_image_itk(moving, field, fixed_grid, nearest, -2000.0, None, None))
    warped = compiled_warp(moving, fixed_grid, field, nearest, -2000.0)
    assert 0.2 < np.mean(expected == -2000) < 0.9 and len(np.unique(expected)) > 20  # outside and inside
    assert warped.dtype == dtype and np.array_equal(warped, expected)


@pytest.mark.parametrize("dtype, base", [(np.int32, 2**26), (np.float64, 2**40)])
def test_the_kernel_reads_wide_pixel_types_exactly(dtype, base):
    """The kernel reads 32-bit integer and float64 voxels in float64 (float32 would round values
    beyond 2^24): moving every voxel by ``base`` moves every interpolated value inside the image
    by ``base`` (exactly for int32; to float64's rounding at 2^40, 2^-12, where float32 reads
    would be 2^16 off)."""
    rng = np.random.default_rng(11)
    values = rng.integers(-1000, 1000, (1, 4, 5))
    small = compiled_warp(*border_case(values.astype(dtype)), False, -2000.0)
    large = compiled_warp(*border_case((values + base).astype(dtype)), False, -2000.0)
    inside = small != -2000
    assert 0.1 < inside.mean() < 0.8 and large.dtype == dtype
    assert np.abs((large[inside] - dtype(base)).astype(np.float64) - small[inside]).max() <= (0 if dtype == np.int32 else 1e-3)
    assert np.all(large[~inside] == -2000)


def test_auto_takes_the_kernel_only_when_loading_it_pays(monkeypatch):
    moving, fixed_grid, field = oblique_case(False)
    calls = count_calls(monkeypatch, compiled, "warp_slab")

    def warp():
        calls.clear()
        warp_images_streamed([moving], field, fixed_grid, [False], [None], None, None, "auto")
        return len(calls)

    monkeypatch.setattr(compiled, "_kernels", None)  # not loaded in this process
    assert not compiled.worth_it(int(np.prod(fixed_grid.size))) and warp() == 0
    monkeypatch.setattr(compiled, "MIN_POINTS", int(np.prod(fixed_grid.size)))
    assert warp() > 0  # a warp this large loads it
    monkeypatch.setattr(compiled, "MIN_POINTS", 10**12)
    assert warp() > 0  # once loaded it is used for any size
    monkeypatch.setenv("VOXELOPT_COMPILED", "0")
    assert not compiled.enabled() and warp() == 0
    with pytest.raises(RuntimeError, match="VOXELOPT_COMPILED=0"):
        compiled.warp_slab(np.zeros((2, 2, 2), np.int16), None, (0, 0, 0), np.zeros((1, 1, 1), np.int16), 0.0, False)


def test_a_kernel_that_cannot_load_leaves_the_warps_to_torch(monkeypatch):
    """A numba that cannot provide the kernel (here: a module without it; in the field: a numpy
    it does not support, no writable cache location) gives a warning and torch warps."""
    import sys
    import types

    moving, fixed_grid, field = oblique_case(False)
    monkeypatch.setattr(compiled, "_kernels", None)
    broken = types.ModuleType("voxelopt._numba_kernels")
    monkeypatch.setitem(sys.modules, "voxelopt._numba_kernels", broken)
    monkeypatch.setattr(voxelopt, "_numba_kernels", broken, raising=False)
    monkeypatch.setattr(compiled, "MIN_POINTS", 0)
    calls = count_calls(monkeypatch, compiled, "warp_slab")
    with pytest.warns(UserWarning, match="compiled kernels are unavailable"):
        warped = warp_images_streamed([moving], field, fixed_grid, [False], [None], None, None, "auto")[0]
    assert calls == [] and compiled._kernels is False and not compiled.worth_it(10**9)
    expected = warp_image_itk(moving, field, fixed_grid, False, None, None, None)
    assert np.abs(sitk.GetArrayFromImage(warped).astype(int) - sitk.GetArrayFromImage(expected)).max() <= 1


def test_warm_up_loads_the_kernels_where_a_warp_of_that_size_would(monkeypatch):
    """``warm_up`` loads the kernels (and runs one) for a grid where :func:`compiled.worth_it`
    would load them, and does nothing for a smaller one."""
    monkeypatch.setattr(compiled, "_kernels", None)
    assert compiled.warm_up(compiled.MIN_POINTS - 1) is False and compiled._kernels is None
    assert compiled.warm_up(compiled.MIN_POINTS) is True and compiled._kernels is voxelopt._numba_kernels
    assert compiled.worth_it(1)  # loaded: every later warp uses them


def test_the_kernel_refuses_outputs_beyond_the_fixed_grid():
    moving, fixed_grid, field = oblique_case(False)
    where = outputs._compiled_field_map(field, fixed_grid, Grid.from_image(moving))
    array = sitk.GetArrayViewFromImage(moving)
    with pytest.raises(ValueError, match="beyond the fixed grid"):
        compiled.warp_slab(array, where, (fixed_grid.size[2] - 1, 0, 0), np.zeros((2,) + fixed_grid.shape[1:], np.int16),
                           0.0, False)
    with pytest.raises(ValueError, match="unknown sampler"):
        warp_images_streamed([moving], field, fixed_grid, [False], [None], None, None, "fastest")


def _kd_distances(a, b, spacing):
    a_mm, b_mm = a * np.asarray(spacing), b * np.asarray(spacing)
    return cKDTree(b_mm).query(a_mm)[0], cKDTree(a_mm).query(b_mm)[0]


@pytest.mark.parametrize("seed", range(3))
def test_surface_distances_equal_the_kd_tree_nearest_neighbours(seed):
    """Exact nearest distances in mm both ways, on sets in and out of C order, far apart or
    interleaved, of one voxel, and flat (a box one voxel thick), with anisotropic spacing."""
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.4, 3.0, 3))
    cases = [
        (rng.integers(0, 30, (400, 3)), rng.integers(0, 30, (300, 3))),  # interleaved, unsorted
        (np.unique(rng.integers(0, 12, (200, 3)), axis=0), np.unique(rng.integers(40, 50, (150, 3)), axis=0)),  # far apart, sorted
        (np.array([[5, 6, 7]]), rng.integers(0, 20, (50, 3))),  # one voxel
        (np.c_[np.full(60, 3), rng.integers(0, 25, (60, 2))], np.c_[np.full(40, 3), rng.integers(0, 25, (40, 2))]),  # one plane
        (np.array([[0, 0, 0]]), np.array([[0, 0, 0]])),  # the same voxel
    ]
    got = compiled.surface_distances([(a.astype(np.int64), b.astype(np.int64)) for a, b in cases], spacing, threads=2)
    for (a, b), (to_b, to_a) in zip(cases, got):
        expected_to_b, expected_to_a = _kd_distances(a, b, spacing)
        np.testing.assert_allclose(to_b, expected_to_b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_a, expected_to_a, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least one voxel"):
        compiled.surface_distances([(np.zeros((0, 3), np.int64), np.zeros((1, 3), np.int64))], spacing)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_surface_voxels_by_the_kernel_equal_those_by_torch(dtype):
    """The kernel's surface voxels are the torch path's, label by label and in the same order: on
    a strided box view, labels touching the image's sides, one-voxel labels and negative values
    (background)."""
    rng = np.random.default_rng(5)
    labels = (rng.random((21, 26, 31)) < 0.6) * rng.integers(1, 5, (21, 26, 31))
    labels[3:15, 4:20, 5:25] = 7  # a block with inner voxels
    labels[0, :, :6] = 9  # on the image's sides
    labels[10, 13, 15] = 11  # one voxel inside the block
    labels[rng.random(labels.shape) < 0.05] = -2
    x = torch.from_numpy(labels.astype(dtype))
    values = [int(v) for v in np.unique(labels) if v > 0]
    for box in [(slice(0, 21), slice(0, 26), slice(0, 31)), (slice(2, 19), slice(1, 26), slice(4, 30))]:
        by_torch = metrics._surface_voxels(x, values, box)
        by_kernel = metrics._surface_voxels(x, values, box, use_compiled=True)
        assert sum(len(v) for v in by_torch.values()) > 1000
        for value in values:
            np.testing.assert_array_equal(by_kernel[value], by_torch[value])
    with pytest.raises(ValueError, match="3-D"):
        compiled.surface_voxels(labels[0])


def test_overlap_counts_equal_bincounts():
    """Per label: the warped map's voxels and those where the fixed map agrees, as two bincounts
    give them, for maps of different integer types on strided views; 0, negative values and
    values from ``size`` on are not counted."""
    rng = np.random.default_rng(6)
    fixed = rng.integers(0, 6, (19, 23, 29)).astype(np.uint8)
    warped = np.where(rng.random(fixed.shape) < 0.7, fixed, rng.integers(-3, 9, fixed.shape)).astype(np.int16)
    box = (slice(1, 18), slice(2, 23), slice(0, 27))
    f, w = fixed[box], warped[box]
    in_warped, in_both = compiled.overlap_counts(f, w, 6, threads=2)
    expected_warped = np.bincount(w[(w > 0) & (w < 6)], minlength=6)
    expected_both = np.bincount(w[(w > 0) & (w < 6) & (f == w)], minlength=6)
    expected_warped[0] = expected_both[0] = 0
    np.testing.assert_array_equal(in_warped, expected_warped)
    np.testing.assert_array_equal(in_both, expected_both)
    assert in_both[1:].sum() > 1000 and in_warped[1:].sum() > in_both[1:].sum()
    with pytest.raises(ValueError, match="one shape"):
        compiled.overlap_counts(f, w[:, :, 1:], 6)


@pytest.mark.parametrize("transforms", ["always", "mixed", "bounded"])
def test_label_scores_by_distance_transforms_equal_those_by_kd_trees(monkeypatch, transforms):
    """The scorer on a grid where the kernels pay (forced here) gives the KD-tree path's HD95,
    labels far apart and nearly coinciding, lost or not, each label by either search, or
    ("bounded") every label from coarse distance transforms and exact distances where needed."""
    rng = np.random.default_rng(3)
    fixed = np.zeros((30, 34, 38), np.uint8)
    fixed[4:20, 5:25, 6:30] = 1
    fixed[15:28, 20:32, 2:12] = 2
    fixed[22:26, 3:9, 30:36] = 3
    warped = np.roll(fixed, (1, -2, 1), axis=(0, 1, 2))  # nearly coinciding
    warped[warped == 2] = 0
    warped[2:8, 2:8, 2:8] = 2  # far from the fixed label 2
    warped[warped == 3] = 0  # lost
    warped[rng.random(warped.shape) < 0.01] = 1
    spacing = (1.7, 0.8, 1.1)
    monkeypatch.setattr(compiled, "MIN_POINTS", 10**12)
    monkeypatch.setattr(compiled, "_kernels", None)
    by_trees = metrics.label_metrics(fixed, fixed, warped, spacing)
    calls = count_calls(monkeypatch, compiled, "surface_distances")
    assert calls == [] and by_trees["labels_lost"] == [3]
    assert compiled._kernels is None  # a grid below the threshold does not load the kernels
    monkeypatch.setattr(compiled, "MIN_POINTS", 0)
    decisions = []  # "mixed": the far label (Dice 0) by the transforms, the other by a KD-tree
    monkeypatch.setattr(metrics, "_transform_is_cheaper",
                        lambda box, points, dice: decisions.append(transforms != "mixed" or dice == 0.0) or decisions[-1])
    monkeypatch.setattr(metrics, "BOUNDED_MIN_BOX_VOXELS", 0 if transforms == "bounded" else 10**12)
    by_transforms = metrics.label_metrics(fixed, fixed, warped, spacing)
    expected = {"always": [True, True], "mixed": [False, True], "bounded": []}[transforms]  # bounded: no choice to make
    assert len(calls) == 1 and decisions == expected
    assert by_transforms["labels"] == by_trees["labels"] and by_transforms["dice"] == by_trees["dice"]
    for label, value in by_trees["hd95_mm"].items():
        assert by_transforms["hd95_mm"][label] == pytest.approx(value, rel=1e-12)


def test_the_cost_model_weighs_box_voxels_against_surface_points(monkeypatch):
    """Distance transforms cost per voxel of the box, KD-tree queries per surface point (more when
    the surfaces lie apart): few surface points in a large box, nearly coinciding, stay with the
    trees; a compact surface 60 voxels from its counterpart goes to the transforms, unless the box
    exceeds the memory cap."""
    def cube_surface(n, step=1):
        face = np.stack(np.meshgrid(np.arange(0, n, step), np.arange(0, n, step), indexing="ij"), -1).reshape(-1, 2)
        return np.concatenate([np.insert(face, axis, value, axis=1) for axis in range(3) for value in (0, n - 1)])

    def cheaper(a, b, dice):
        return metrics._transform_is_cheaper(compiled.joint_box(a, b)[1], len(a) + len(b), dice)

    sparse = cube_surface(300, step=10)  # 5 k points in a box of 300^3
    assert not cheaper(sparse, sparse + 1, dice=0.95)
    compact = cube_surface(160)  # 154 k points
    assert cheaper(compact, compact + 60, dice=0.2)
    large = cube_surface(320)  # 614 k points: cheaper by the transforms, but a box of 330^3 voxels
    assert 330**3 > metrics.MAX_TRANSFORM_BOX_VOXELS and not cheaper(large, large + 10, dice=0.0)
    monkeypatch.setattr(metrics, "MAX_TRANSFORM_BOX_VOXELS", 330**3)
    assert cheaper(large, large + 10, dice=0.0)


@pytest.mark.parametrize("size", [1, 2, 7, 400, 3001])
def test_the_percentile_within_bounds_is_the_exact_percentile(size):
    """From distances known only to within a slack, the pooled 95th percentile equals numpy's on
    the exact values (ties and all), computing exact values only for the points the bounds leave
    undecided: few of them when the slack is small against the spread."""
    rng = np.random.default_rng(size)
    exact = [np.round(rng.gamma(2.0, 3.0, size), 1), np.round(rng.gamma(2.0, 4.0, size + 3), 1)]  # with ties
    slack = 0.5
    coarse = [values + rng.uniform(-slack, slack, len(values)) for values in exact]
    asked = []

    def exact_of(index):
        def distances(chosen, within):
            assert np.all(exact[index][chosen] <= within + 1e-12)
            asked.append(int(chosen.sum()))
            return exact[index][chosen]
        return distances

    got = metrics._percentile_within_bounds(coarse, slack, (exact_of(0), exact_of(1)))
    assert got == pytest.approx(np.percentile(np.concatenate(exact), 95), rel=1e-13, abs=1e-13)
    if size >= 400:
        assert sum(asked) < 0.25 * (2 * size + 3)


def test_a_point_beyond_its_bound_is_an_error_not_a_wrong_score(monkeypatch):
    """Should the bounds ever be wrong, the bounded KD-tree search raises instead of scoring."""
    scorer = metrics.LabelScorer(np.ones((4, 4, 4), np.uint8), np.ones((2, 2, 2), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(ArithmeticError, match="bound"):
        scorer._nearest(np.array([[0, 0, 0]]), np.array([[3, 3, 3]]), within=1.0)


def test_the_coarse_slack_bounds_every_voxel_distance_and_is_tight():
    """Two voxels' distance differs from that of their coarse voxels' centres (on the grid
    COARSE_FACTOR times coarser) by at most the slack, and by nearly that much for some pairs."""
    rng = np.random.default_rng(8)
    spacing = np.array([1.7, 0.6, 0.9])
    a, b = rng.integers(0, 40, (20000, 3)), rng.integers(0, 40, (20000, 3))
    factor = metrics.COARSE_FACTOR
    exact = np.linalg.norm((a - b) * spacing, axis=1)
    coarse = np.linalg.norm((a // factor - b // factor) * factor * spacing, axis=1)
    slack = metrics._coarse_slack(spacing)
    assert np.abs(exact - coarse).max() <= slack
    assert np.abs(exact - coarse).max() > 0.8 * slack


def test_coarse_bounds_only_for_large_boxes_within_the_memory_cap(monkeypatch):
    """The bounds are used from BOUNDED_MIN_BOX_VOXELS of the box holding both surfaces on, unless
    the coarse box would exceed the distance transforms' memory cap (then the KD-trees serve)."""
    assert not metrics._bounds_pay((100, 100, 100))  # 1 M voxels: too small to pay
    assert metrics._bounds_pay((200, 200, 200))  # 8 M voxels, 1 M coarse
    monkeypatch.setattr(metrics, "MAX_TRANSFORM_BOX_VOXELS", 999_999)
    assert not metrics._bounds_pay((200, 200, 200))  # the coarse box beyond the cap


def test_scores_with_torch_surfaces_and_compiled_distances_agree(monkeypatch):
    """On a CUDA device the surface voxels and counts come from torch while the distances may come
    from the compiled transforms and coarse bounds: that mix scores as the all-compiled CPU path."""
    rng = np.random.default_rng(12)
    fixed = np.zeros((40, 44, 48), np.uint8)
    fixed[5:30, 6:36, 8:40] = 1
    fixed[20:38, 25:42, 3:20] = 2
    warped = np.roll(fixed, (2, -3, 1), axis=(0, 1, 2))
    warped[rng.random(warped.shape) < 0.005] = 2
    monkeypatch.setattr(compiled, "MIN_POINTS", 0)
    monkeypatch.setattr(metrics, "BOUNDED_MIN_BOX_VOXELS", 50_000)  # label 2 (scattered: a large box) bounded, 1 not
    bounded = count_calls(monkeypatch, metrics, "_percentile_within_bounds")
    scorer = metrics.LabelScorer(fixed, fixed, (1.5, 0.7, 0.9))
    assert scorer._compiled_surfaces
    all_compiled = scorer.score(warped)
    scorer._compiled_surfaces = False  # what a CUDA device gives
    mixed = scorer.score(warped)
    assert mixed["dice"] == all_compiled["dice"] and len(bounded) == 2  # one bounded label per score
    for label, value in all_compiled["hd95_mm"].items():
        assert mixed["hd95_mm"][label] == pytest.approx(value, rel=1e-12)
