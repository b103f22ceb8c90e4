"""register() end to end on synthetic images with known answers."""

import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from testdata import count_calls, make_image, oblique_direction, smooth_random_volume
import voxelopt
from voxelopt import (
    ArrayImage,
    ConfigError,
    FeatureCache,
    InputError,
    RegistrationCancelled,
    RegistrationConfig,
    register,
)
from voxelopt.geometry import Grid
from voxelopt.phantom import phantom_pair

SMALL = RegistrationConfig.preset("paper", levels=3, feature_spacing=None)

try:
    import numba  # noqa: F401  (the compiled warp kernel, extra "fast")
    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False
#: The streamed warps' samplers, each asked for explicitly (whatever the size of the warp).
SAMPLERS = ["torch", pytest.param("compiled", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed"))]


def translated_pair(shift_mm, direction=None, spacing=(2.0, 2.0, 2.0), shape=(36, 40, 44), seed=0):
    """fixed(x) = moving(x + t): a moving image and a fixed image sampled at points shifted by t."""
    big = smooth_random_volume((60, 64, 68), seed=seed)
    moving = make_image(big, spacing, (0.0, 0.0, 0.0), direction)
    centre = Grid.from_image(moving).center()
    fixed_grid = Grid(tuple(shape[::-1]), spacing, (0, 0, 0), tuple(direction or np.eye(3).ravel()))
    origin = centre - fixed_grid.index_to_physical @ ((np.asarray(fixed_grid.size) - 1) / 2) - np.asarray(shift_mm)
    fixed_grid = Grid(fixed_grid.size, fixed_grid.spacing, tuple(origin), fixed_grid.direction)
    fixed = sitk.Resample(moving, fixed_grid.reference_image(), sitk.TranslationTransform(3, list(shift_mm)),
                          sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return fixed, moving


@pytest.fixture(scope="module")
def pair():
    return phantom_pair(size=(64, 56, 48), spacing=(3.0, 3.0, 3.0), max_displacement_mm=6.0, seed=2)


def field_error(result, true_field, mask):
    est, true = sitk.GetArrayFromImage(result.field_image("fixed")), sitk.GetArrayFromImage(true_field)
    return float(np.linalg.norm(est - true, axis=-1)[mask].mean()), float(np.linalg.norm(true, axis=-1)[mask].mean())


def test_known_smooth_deformation_is_recovered(pair):
    result = register(pair.fixed, pair.moving, RegistrationConfig.preset("paper", levels=4), pair.fixed_labels, pair.moving_labels)
    organs = sitk.GetArrayFromImage(pair.fixed_labels) > 0
    error, before = field_error(result, pair.true_field, organs)
    print(f"phantom: mean displacement error {error:.2f} mm in organs (true mean {before:.2f} mm)")
    assert error < 0.6 * before
    assert result.metrics["dice_mean"] > result.metrics["dice_initial_mean"] + 0.03
    assert result.metrics["folding_percent"] < 0.5


@pytest.mark.parametrize("direction", [None, oblique_direction((15, -20, 10))])
def test_known_translation_in_mm_with_sign_on_anisotropic_grids(direction):
    # Whole voxels of the working grid (3, 4, 5 mm) along the image axes: the discrete solver
    # recovers them exactly. On the oblique grid the same shift is fractional along the image
    # axes, which whole-voxel labels resolve to within half a working voxel (2.5 mm).
    shift = np.array([6.0, -8.0, 5.0])
    fixed, moving = translated_pair(shift, direction, spacing=(1.5, 2.0, 2.5))
    result = register(fixed, moving, SMALL)
    d = sitk.GetArrayFromImage(result.field)[6:-6, 6:-6, 6:-6].reshape(-1, 3)
    tolerance = 0.6 if direction is None else 2.5
    assert np.median(d, axis=0) == pytest.approx(shift, abs=tolerance)


def test_refinement_resolves_sub_voxel_shifts():
    """On the oblique grid the shift is fractional along the image axes; the continuous
    refinement recovers it to a fraction of a millimetre where labels alone cannot."""
    shift = np.array([6.0, -8.0, 5.0])
    fixed, moving = translated_pair(shift, oblique_direction((15, -20, 10)), spacing=(1.5, 2.0, 2.5))
    discrete = register(fixed, moving, SMALL)
    refined = register(fixed, moving, SMALL.replace(refine_iterations=40, refine_scale=1.0))  # on the working grid
    errors = []
    for result in (discrete, refined):
        d = sitk.GetArrayFromImage(result.field)[6:-6, 6:-6, 6:-6].reshape(-1, 3)
        errors.append(np.linalg.norm(np.median(d, axis=0) - shift))
    assert errors[1] < 0.6 < errors[0]
    assert "refine" in refined.timings and "refine" not in discrete.timings


def test_identical_images_give_a_near_zero_field():
    image = make_image(smooth_random_volume((30, 34, 38)), (2.0, 2.0, 2.0))
    result = register(image, image, SMALL)
    assert np.abs(sitk.GetArrayFromImage(result.field)).max() < 1e-4
    assert np.allclose(sitk.GetArrayFromImage(result.jacobian), 1.0, atol=1e-4)


def test_an_image_edited_between_registrations_is_read_as_it_now_is():
    """A caller keeps a copy of an image (sharing its buffer) and edits the image: SimpleITK gives
    it a buffer of its own, and the next registration and warp must read that one, not the
    buffer the first registration read (which the copy now holds, or which is freed with it)."""
    image = make_image(smooth_random_volume((30, 34, 38)), (2.0, 2.0, 2.0))
    moving = sitk.Image(image)
    register(image, moving, SMALL)
    kept = sitk.Image(moving)
    moving[0:38, 0:17, :] = -1000.0  # half of the image becomes air
    edited = register(image, moving, SMALL)
    fresh = register(image, sitk.Image(moving), SMALL)  # the same content in a new object
    np.testing.assert_array_equal(sitk.GetArrayFromImage(edited.field), sitk.GetArrayFromImage(fresh.field))
    assert np.abs(sitk.GetArrayFromImage(edited.field)).max() > 1.0  # the edit matters
    np.testing.assert_array_equal(sitk.GetArrayFromImage(edited.warp(moving)), sitk.GetArrayFromImage(fresh.warp(moving)))
    del kept


@pytest.mark.parametrize("field_grid", ["working", "fixed"])
def test_coarse_field_reproduces_the_warp_through_simpleitk(field_grid):
    """Oblique anisotropic fixed, a different moving grid, the field on the coarser 3 mm feature grid
    (or on the full fixed grid): sitk.Resample through the field gives the library's warped image."""
    shift = np.array([3.0, 2.0, -2.0])
    fixed, moving = translated_pair(shift, oblique_direction((25, 5, -10)), spacing=(1.6, 2.2, 2.6))
    moving = sitk.Resample(moving, Grid.from_image(moving).with_spacing(1.9).reference_image(), sitk.Transform(),
                           sitk.sitkLinear, 0.0, sitk.sitkFloat32)  # moving on its own, different grid
    result = register(fixed, moving, SMALL.replace(feature_spacing=3.0, working_scale=1.0))
    inner = sitk.GetArrayFromImage(result.field)[4:-4, 4:-4, 4:-4].reshape(-1, 3)
    assert np.linalg.norm(np.median(inner, axis=0) - shift) < 0.5 * np.linalg.norm(shift)  # a real, non-zero field
    grid = Grid.from_image(fixed)
    field = result.field_image(field_grid)
    assert field.GetPixelID() == sitk.sitkVectorFloat32
    if field_grid == "working":
        assert np.prod(field.GetSize()) < np.prod(fixed.GetSize()) / 3  # coarser than the fixed grid
        assert Grid.from_image(field).same_as(grid.with_spacing(3.0))
    else:
        assert Grid.from_image(field).same_as(grid)
    assert Grid.from_image(result.warped).same_as(grid)
    default = float(sitk.GetArrayViewFromImage(moving).min())
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    reference = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, default, sitk.sitkFloat32)
    diff = np.abs(sitk.GetArrayFromImage(reference) - sitk.GetArrayFromImage(result.warped))
    assert diff.max() < 0.05  # HU, on an image with a 150 HU standard deviation
    assert np.abs(sitk.GetArrayFromImage(result.warped)).max() > 100  # not a blank image


def test_an_image_with_several_components_is_warped_like_each_component(pair):
    """RegistrationResult.warp of a 2-component image (SimpleITK's path) equals the warp of each
    component alone (torch's path) to float32 rounding, and keeps its components."""
    result = register(pair.fixed, pair.moving, SMALL)
    first = sitk.Cast(pair.moving, sitk.sitkFloat32)
    second = sitk.Cast(pair.moving * -0.5 + 20.0, sitk.sitkFloat32)
    both = result.warp(sitk.Compose(first, second))
    assert both.GetNumberOfComponentsPerPixel() == 2 and Grid.from_image(both).same_as(Grid.from_image(pair.fixed))
    array = sitk.GetArrayFromImage(both)
    default = float(min(sitk.GetArrayViewFromImage(first).min(), sitk.GetArrayViewFromImage(second).min()))
    for c, image in enumerate((first, second)):
        alone = sitk.GetArrayFromImage(voxelopt.outputs.warp_image(image, result.grid_field, result.fixed_grid,
                                                                   default=default))
        assert np.mean(np.abs(array[..., c] - alone) > 0.05) < 1e-4


def test_integer_inputs_keep_their_pixel_type(pair):
    fixed = sitk.Cast(pair.fixed, sitk.sitkInt16)
    moving = sitk.Cast(pair.moving, sitk.sitkInt16)
    labels = sitk.Cast(pair.moving_labels, sitk.sitkUInt16)
    result = register(fixed, moving, SMALL, pair.fixed_labels, labels)
    assert result.warped.GetPixelID() == sitk.sitkInt16
    assert result.warped_labels.GetPixelID() == sitk.sitkUInt16
    as_float = result.warp(sitk.Cast(moving, sitk.sitkFloat32))
    rounded = np.rint(sitk.GetArrayFromImage(as_float))
    # rounded, not truncated (which would differ in about half the voxels); the compiled kernel
    # rounds its float64 value, which the float32 output may hold a hair across a half
    differ = sitk.GetArrayFromImage(result.warped).astype(np.float64) - rounded
    assert np.abs(differ).max() <= 1 and np.mean(differ != 0) < 1e-3


def test_labels_that_miss_their_image_are_an_error(pair):
    off = sitk.Image(pair.moving_labels)
    off.SetOrigin((500.0, 500.0, 500.0))
    with pytest.raises(InputError, match="moving labels do not overlap their image"):
        register(pair.fixed, pair.moving, SMALL, pair.fixed_labels, off)
    with pytest.raises(InputError, match="fixed labels holds no labelled voxel"):
        register(pair.fixed, pair.moving, SMALL, pair.fixed_labels * 0, pair.moving_labels)


def test_labels_beyond_what_the_scores_count_are_refused_with_the_inputs(pair):
    huge = sitk.Cast(pair.moving_labels, sitk.sitkUInt32) * (2**25)  # labels 2^25, 2^26, ...
    with pytest.raises(InputError, match=r"moving labels holds the label \d+; labels up to 16777216 are supported"):
        voxelopt.inputs.checked_labels(huge, pair.moving, "moving labels")


def test_a_registration_too_large_for_memory_is_refused_before_it_starts():
    # 0.05 mm features of a 2000-voxel-wide box would need terabytes.
    image = sitk.Image([2000, 2000, 20], sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 5.0))
    with pytest.raises(InputError, match=r"needs about .* GB on cpu but only"):
        register(image, image, SMALL.replace(feature_spacing=0.05))


def test_the_memory_estimate_counts_the_finest_levels_own_search_radius():
    from voxelopt.geometry import Grid
    from voxelopt.peak_memory import estimate_peak_bytes

    image = sitk.Image([200, 200, 100], sitk.sitkInt16)
    working = Grid.from_image(image)  # a working grid as large as the image: the solver dominates
    estimate = lambda k, k_finest: estimate_peak_bytes(image, image, working, working, k, k_finest, 12, False)  # noqa: E731
    assert estimate(3, 1) < estimate(3, 3)  # 27 labels at the finest level instead of 343
    assert estimate(3, 1) > estimate(1, 1)  # the coarser level's 343 labels on 1/8 of the voxels
    assert estimate(1, 3) == estimate(3, 3)  # the finest level's radius dominates either way


def test_labels_are_warped_and_scored(pair):
    result = register(pair.fixed, pair.moving, SMALL, pair.fixed_labels, pair.moving_labels)
    warped = sitk.GetArrayFromImage(result.warped_labels)
    assert set(np.unique(warped)) <= set(np.unique(sitk.GetArrayFromImage(pair.moving_labels)))
    assert set(result.metrics["dice"]) == {str(v) for v in result.metrics["labels"]}
    assert np.isfinite(result.metrics["hd95_mm_mean"])


def test_the_outputs_kernels_are_loaded_before_the_outputs_when_a_warp_will_need_them(pair, monkeypatch):
    """The compiled kernels' one-time loading is started beside the cost masks (a core idles
    there) for the fixed grid's size, when labels or the moving image will be warped; not when
    nothing will be."""
    from voxelopt import compiled

    sizes = []
    monkeypatch.setattr(compiled, "warm_up", lambda points: sizes.append(points) or False)
    register(pair.fixed, pair.moving, SMALL, pair.fixed_labels, pair.moving_labels)
    register(pair.fixed, pair.moving, SMALL, warp_moving=True)
    assert sizes == [int(np.prod(pair.fixed.GetSize()))] * 2
    register(pair.fixed, pair.moving, SMALL)
    assert len(sizes) == 2


def test_the_moving_image_warped_in_the_outputs_stage_is_the_one_warped_on_demand(pair):
    """``warp_moving`` warps the moving image beside the label scores (after registration: on
    another thread): the same image and scores as without it, the warp timed, progress through it."""
    plain = register(pair.fixed, pair.moving, SMALL, pair.fixed_labels, pair.moving_labels)
    messages = []
    eager = register(pair.fixed, pair.moving, SMALL, pair.fixed_labels, pair.moving_labels, warp_moving=True,
                     progress=lambda fraction, message: messages.append((fraction, message)))
    assert "warp" not in plain.timings and 0 < eager.timings["warp"] < eager.timings["outputs"]
    assert eager._warped is not None and plain._warped is None
    assert np.array_equal(sitk.GetArrayViewFromImage(eager._warped), sitk.GetArrayViewFromImage(plain.warped))
    assert eager.warped.GetPixelID() == pair.moving.GetPixelID()
    for key in ("dice", "hd95_mm", "dice_initial_mean", "hd95_mm_initial_mean", "sdlogj"):
        assert eager.metrics[key] == plain.metrics[key]
    labels = [fraction for fraction, message in messages if message == "warping labels"]
    image = [fraction for fraction, message in messages if message == "warping the moving image"]
    assert labels and image and max(labels) <= min(image) and max(image) <= 1.0
    assert [fraction for fraction, _ in messages] == sorted(fraction for fraction, _ in messages)


def test_a_moving_image_too_small_to_overlap_says_to_swap_the_images():
    fixed, moving = translated_pair([0.0, 0.0, 0.0], shape=(36, 40, 44))
    thin = fixed[:, :, 18:19]  # one of its 36 slices: no alignment puts 5 % of the fixed image inside it
    thin.SetSpacing((2.0, 2.0, 1.0))
    thin = sitk.Resample(thin, [thin.GetSize()[0], thin.GetSize()[1], 2], sitk.Transform(), sitk.sitkNearestNeighbor,
                         thin.GetOrigin(), (2.0, 2.0, 1.0), thin.GetDirection())  # two 1 mm slices: 2 mm of 72
    with pytest.raises(InputError, match=r"box is only \d\.\d% of the fixed image's: register the other way round"):
        register(fixed, thin, SMALL.replace(init="com"))
    far = sitk.Image(moving)
    far.SetOrigin((150.0, -90.0, 60.0))  # as large as the fixed image, elsewhere: the alignment hint
    with pytest.raises(InputError, match="do not overlap") as info:
        register(fixed, far, SMALL)
    assert "try another initial alignment" in str(info.value) and "other way round" not in str(info.value)


def test_arrays_with_geometry_are_accepted():
    volume = smooth_random_volume((24, 28, 32))
    image = ArrayImage(volume, spacing=(2.0, 2.0, 2.0))
    result = register(image, image, SMALL)
    assert result.field.GetSize() == (16, 14, 12)  # the working grid: half the 2 mm fixed grid
    assert result.warped.GetSize() == (32, 28, 24)


def test_initial_alignment_recovers_a_large_offset():
    fixed, moving = translated_pair([0.0, 0.0, 0.0], shape=(36, 40, 44))
    far = sitk.Image(moving)
    far.SetOrigin((150.0, -90.0, 60.0))  # a meaningless header origin
    with pytest.raises(InputError, match="do not overlap"):
        register(fixed, far, SMALL)
    for mode in ("centers", "com"):
        result = register(fixed, far, SMALL.replace(init=mode))
        d = sitk.GetArrayFromImage(result.field)[6:-6, 6:-6, 6:-6].reshape(-1, 3)
        assert np.median(d, axis=0) == pytest.approx([150.0, -90.0, 60.0], abs=1.5), mode


def test_cache_reuses_features_when_only_solver_parameters_change(pair):
    cache = FeatureCache()
    first = register(pair.fixed, pair.moving, SMALL, cache=cache)
    assert (cache.hits, cache.misses) == (0, 4)  # both images' features and cost masks
    second = register(pair.fixed, pair.moving, SMALL.replace(alpha=3.0, levels=2, thetas=[10.0, 1.0]), cache=cache)
    assert (cache.hits, cache.misses) == (4, 4)
    assert second.timings["features_fixed"] < first.timings["features_fixed"]
    register(pair.fixed, pair.moving, SMALL.replace(features="raw"), cache=cache)
    assert (cache.hits, cache.misses) == (6, 6)  # new features, the same cost masks


def test_cache_keeps_the_affine_alignment_of_a_pair(pair, monkeypatch):
    import voxelopt.affine

    calls = []
    estimate = voxelopt.affine.estimate_affine
    monkeypatch.setattr(voxelopt.affine, "estimate_affine", lambda *a, **k: calls.append(1) or estimate(*a, **k))
    cache = FeatureCache()
    first = register(pair.fixed, pair.moving, SMALL.replace(init="affine"), cache=cache)
    second = register(pair.fixed, pair.moving, SMALL.replace(init="affine", alpha=3.0), cache=cache)
    assert len(calls) == 1 and cache.hits >= 3  # the alignment and both images' features
    assert second.initial_transform == first.initial_transform
    register(pair.fixed, pair.moving, SMALL.replace(init="affine", hu_window=(-900.0, 400.0)), cache=cache)
    register(pair.moving, pair.fixed, SMALL.replace(init="affine"), cache=cache)
    assert len(calls) == 3  # another window, another pair: estimated again


def test_each_image_is_digested_once_per_registration(pair, monkeypatch):
    import voxelopt.digest
    import voxelopt.inputs
    import voxelopt.stages

    digested = []
    digest = voxelopt.digest.image_digest
    for module in (voxelopt.digest, voxelopt.inputs, voxelopt.stages):  # wherever the name was imported
        monkeypatch.setattr(module, "image_digest", lambda image: digested.append(image) or digest(image))
    register(pair.fixed, pair.moving, SMALL.replace(init="affine"), cache=FeatureCache())
    assert len(digested) == 2  # the fixed and the moving image: for the affine stage's and the features' keys


def test_images_marked_constant_are_digested_once_for_all_registrations(pair, monkeypatch):
    """A caller that promises its images never change (the Slicer module's copies) has each
    digested once across registrations; any other image, on every registration."""
    import gc

    import voxelopt.digest

    digested = []
    digest = voxelopt.digest.image_digest
    monkeypatch.setattr(voxelopt.digest, "image_digest", lambda image: digested.append(image) or digest(image))
    cache = FeatureCache()
    fixed, moving = sitk.Image(pair.fixed), sitk.Image(pair.moving)
    fixed_labels, moving_labels = sitk.Image(pair.fixed_labels), sitk.Image(pair.moving_labels)
    for image in (fixed, moving, fixed_labels):
        cache.mark_constant(image)
    first = register(fixed, moving, SMALL, fixed_labels, moving_labels, cache=cache)
    assert len(digested) == 4  # both images (features) and both label maps (the scores before registration)
    second = register(fixed, moving, SMALL.replace(alpha=3.0), fixed_labels, moving_labels, cache=cache)
    assert digested[4:] == [moving_labels]  # only the unmarked label map again
    assert second.metrics["dice_initial_mean"] == first.metrics["dice_initial_mean"]
    # the marked objects' digests are the content digests: a copy of the same content hits the cache
    hits = cache.hits
    register(sitk.Image(pair.fixed), moving, SMALL.replace(alpha=2.0), cache=cache)
    assert cache.hits == hits + 4  # both images' features and cost masks
    # the fixed side of the scores comes from the cache, still valid once its label maps are gone
    import voxelopt.stages

    built = []
    scorer = voxelopt.stages.LabelScorer
    monkeypatch.setattr(voxelopt.stages, "LabelScorer", lambda *a: built.append(1) or scorer(*a))
    third = register(fixed, moving, SMALL.replace(alpha=3.0), sitk.Image(pair.fixed_labels),
                     sitk.Image(pair.moving_labels), cache=cache)
    gc.collect()
    sitk.Image(pair.fixed_labels.GetSize(), sitk.sitkUInt8)  # fresh memory where the label maps were
    fourth = register(fixed, moving, SMALL.replace(alpha=3.0), sitk.Image(pair.fixed_labels),
                      sitk.Image(pair.moving_labels), cache=cache)
    assert built == [] and third.metrics["dice"] == fourth.metrics["dice"] == second.metrics["dice"]
    register(fixed, moving, SMALL, sitk.Image(pair.moving_labels), sitk.Image(pair.moving_labels), cache=cache)
    assert built == [1]  # other fixed labels: a new scorer, which replaces the first (one is kept)
    assert sum(key[0] == "label scorer" for key in cache._values) == 1
    register(fixed, moving, SMALL, sitk.Image(pair.fixed_labels), sitk.Image(pair.moving_labels), cache=cache)
    assert built == [1, 1]
    # entries go with their images (weak references)
    assert len(cache.constant_images) == 3
    del fixed, first, second, third, fourth, digested[:]
    gc.collect()
    assert len(cache.constant_images) == 2


def test_an_affine_stage_failing_in_the_background_is_reported(pair):
    flat = sitk.Image(pair.moving.GetSize(), sitk.sitkFloat32) - 40.0
    flat.CopyInformation(pair.moving)
    with pytest.raises(InputError, match="moving image is uniform"):
        register(pair.fixed, flat, SMALL.replace(init="affine"))
    # the stage is deterministic, also while the features are computed beside it
    first, second = (register(pair.fixed, pair.moving, SMALL.replace(init="affine")) for _ in range(2))
    assert first.initial_transform == second.initial_transform
    assert np.array_equal(sitk.GetArrayFromImage(first.field), sitk.GetArrayFromImage(second.field))


def test_cancel_is_heard_while_the_affine_stage_runs(pair, monkeypatch):
    import threading
    import time

    import voxelopt.pipeline

    finished = threading.Event()
    align = voxelopt.pipeline.align

    def slow_align(*args, **kwargs):
        time.sleep(3.0)  # an affine stage that outlasts the fixed features
        result = align(*args, **kwargs)
        finished.set()
        return result

    monkeypatch.setattr(voxelopt.pipeline, "align", slow_align)
    messages = []
    with pytest.raises(RegistrationCancelled):
        register(pair.fixed, pair.moving, SMALL.replace(init="affine"), progress=lambda f, m: messages.append(m),
                 cancel=lambda: "affine alignment" in messages)
    assert not finished.is_set()  # cancelled while waiting, not after the alignment
    # the stage then finishes on its own: waited for here, or it would run into later tests (it
    # calls the affine estimate, which a later test counts)
    assert finished.wait(timeout=60)


def test_progress_is_reported_per_level_and_cancel_stops(pair):
    seen = []
    register(pair.fixed, pair.moving, SMALL, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [m for _, m in seen if m.startswith("pyramid level")] == [f"pyramid level {i}/3" for i in (1, 2, 3)]
    calls = []

    def cancel_after_features():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(RegistrationCancelled):
        register(pair.fixed, pair.moving, SMALL, cancel=cancel_after_features)


def nan_image():
    volume = smooth_random_volume((20, 20, 20))
    volume[3, 4, 5] = np.nan
    return make_image(volume)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sitk.Image([20, 20], sitk.sitkFloat32), "must be a 3-D image"),
        (lambda: sitk.Image([20, 20, 20], sitk.sitkVectorFloat32, 3), "must be a scalar image"),
        (nan_image, "NaN or infinite"),
        (lambda: make_image(np.zeros((1, 40, 40), np.float32), (2.0, 2.0, 2.0)), "is a single slice"),
        (lambda: make_image(np.zeros((2, 40, 40), np.float32), (2.0, 2.0, 2.0)), "too small"),
    ],
)
def test_bad_inputs_are_rejected_clearly(make, message):
    good = make_image(smooth_random_volume((20, 20, 20)), (2.0, 2.0, 2.0))
    with pytest.raises(InputError, match=message):
        register(make(), good, SMALL)


def test_image_too_small_for_the_pyramid():
    image = make_image(smooth_random_volume((16, 16, 16)), (2.0, 2.0, 2.0))
    with pytest.raises(InputError, match="too small for 5 pyramid levels.*at most 2"):
        register(image, image, RegistrationConfig.preset("paper"))


def test_disk_cache_survives_a_new_process_and_replaces_bad_files(pair, tmp_path):
    first = FeatureCache(directory=tmp_path)
    reference = register(pair.fixed, pair.moving, SMALL, cache=first)
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 2 and first.misses == 4  # features (on disk) and cost masks (in memory only)
    second = FeatureCache(directory=tmp_path)  # a fresh cache, as in another process
    again = register(pair.fixed, pair.moving, SMALL, cache=second)
    assert (second.disk_hits, second.misses) == (2, 2)
    assert np.array_equal(sitk.GetArrayFromImage(again.field), sitk.GetArrayFromImage(reference.field))
    files[0].write_bytes(b"not a tensor")
    third = FeatureCache(directory=tmp_path)
    register(pair.fixed, pair.moving, SMALL, cache=third)
    assert (third.disk_hits, third.misses) == (1, 3)
    assert not list(tmp_path.glob("*.part"))
    # files that read as tensors but are not this entry's usable features are recomputed too:
    # the fixed and moving files swapped, a tensor of another shape, a NaN tensor
    fixed_bytes, moving_bytes = (path.read_bytes() for path in files)
    stored = torch.load(files[0], weights_only=True)
    for damage in ("swapped", "shape", "nan"):
        if damage == "swapped":
            files[0].write_bytes(moving_bytes)
            files[1].write_bytes(fixed_bytes)
        else:
            tensor = stored["tensor"][:, :, :4] if damage == "shape" else stored["tensor"] * float("nan")
            torch.save({"key": stored["key"], "tensor": tensor}, files[0])
        cache = FeatureCache(directory=tmp_path)
        rerun = register(pair.fixed, pair.moving, SMALL, cache=cache)
        assert (cache.disk_hits, cache.misses) == ((0, 4) if damage == "swapped" else (1, 3)), damage
        assert np.array_equal(sitk.GetArrayFromImage(rerun.field), sitk.GetArrayFromImage(reference.field)), damage


def test_disk_cache_keeps_the_alignment_and_the_scores_before_registration(pair, tmp_path, monkeypatch):
    """With a directory, the affine alignment and the scores before registration survive a new
    process (a command-line re-run repeats neither); a value file that cannot be read, or one
    written by another version of the library, is recomputed, and so is an alignment estimated
    with other settings."""
    import voxelopt
    import voxelopt.affine
    from voxelopt.metrics import LabelScorer

    estimates = count_calls(monkeypatch, voxelopt.affine, "estimate_affine")
    scores = count_calls(monkeypatch, LabelScorer, "score")
    config = SMALL.replace(init="affine")

    def run():
        return register(pair.fixed, pair.moving, config, pair.fixed_labels, pair.moving_labels,
                        cache=FeatureCache(directory=tmp_path))  # a fresh cache, as in another process

    first = run()
    assert (len(estimates), len(scores)) == (1, 2)  # the scores before and after registration
    assert len(list(tmp_path.glob("*.json"))) == 2
    second = run()
    assert (len(estimates), len(scores)) == (1, 3)  # only the scores after registration
    assert second.initial_transform == first.initial_transform
    for key in ("dice_initial_mean", "hd95_mm_initial_mean", "dice_mean"):
        assert second.metrics[key] == first.metrics[key]
    for path in tmp_path.glob("*.json"):
        path.write_text("{not json")
    run()
    assert (len(estimates), len(scores)) == (2, 5)
    for path in tmp_path.glob("*.json"):  # JSON, but not the value this version wrote
        path.write_text('{"json": {"bogus": 1}}')
    again = run()
    assert (len(estimates), len(scores)) == (3, 7) and again.metrics["dice_initial_mean"] == first.metrics["dice_initial_mean"]
    monkeypatch.setattr(voxelopt, "__version__", "another")
    run()
    assert (len(estimates), len(scores)) == (4, 9)
    monkeypatch.setattr(voxelopt.affine, "SETTINGS", voxelopt.affine.SETTINGS + ("more steps",))
    run()
    assert (len(estimates), len(scores)) == (5, 10)  # the same alignment: the scores before are kept
    assert not list(tmp_path.glob("*.part"))


def known_affine_pair():
    """fixed(x) = moving(T(x)) for a known affine T (rotation ~6 degrees, 4 % scaling, 8 mm shift)."""
    moving = make_image(smooth_random_volume((48, 52, 56), seed=3), (2.5, 2.5, 2.5))
    transform = sitk.AffineTransform(3)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*np.deg2rad([4.0, -3.0, 6.0]))
    transform.SetMatrix((np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag([1.04, 0.97, 1.0])).ravel().tolist())
    transform.SetCenter(Grid.from_image(moving).center().tolist())
    transform.SetTranslation((8.0, -5.0, 3.0))
    fixed = sitk.Resample(moving, moving, transform, sitk.sitkLinear, -300.0, sitk.sitkFloat32)
    return fixed, moving, transform


def affine_error_mm(result, fixed, transform):
    """Mean |d(x) - (T(x) - x)| over the inner fixed voxels, mm."""
    field = sitk.GetArrayFromImage(result.field_image("fixed"))[8:-8, 8:-8, 8:-8]
    grid = Grid.from_image(fixed)
    k, j, i = np.meshgrid(*(np.arange(8, n - 8) for n in grid.shape), indexing="ij")
    x = np.stack([i, j, k], -1) @ grid.index_to_physical.T + np.asarray(grid.origin)
    a = np.asarray(transform.GetMatrix()).reshape(3, 3)
    c = np.asarray(transform.GetCenter())
    truth = (x - c) @ a.T + c + np.asarray(transform.GetTranslation()) - x
    return float(np.linalg.norm(field - truth, axis=-1).mean()), float(np.linalg.norm(truth, axis=-1).mean())


def test_affine_initial_alignment_and_a_given_initial_transform_are_composed_into_the_field(tmp_path):
    fixed, moving, transform = known_affine_pair()
    config = SMALL.replace(levels=2)
    error_none, size = affine_error_mm(register(fixed, moving, config), fixed, transform)
    affine = register(fixed, moving, config.replace(init="affine"))
    error_affine, _ = affine_error_mm(affine, fixed, transform)
    assert error_affine < 0.75 and error_affine < 0.5 * error_none < 0.5 * size  # sub-voxel with the affine stage
    assert not np.allclose(np.asarray(affine.initial_transform)[:3, :3], np.eye(3))
    path = tmp_path / "initial.tfm"
    sitk.WriteTransform(transform, str(path))
    given = register(fixed, moving, config, initial_transform=path)
    assert affine_error_mm(given, fixed, transform)[0] < 0.75
    with pytest.raises(voxelopt.ConfigError, match=re.escape("initial transform is used with init 'none' (as it is) or "
                                                             "'affine' (as the affine stage's start), not 'com' (the 'fast' "
                                                             "preset's init): set init (--init) to 'none' or 'affine'")):
        register(fixed, moving, config.replace(init="com"), initial_transform=path)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("nearest", [False, True])
@pytest.mark.parametrize("field_grid", ["working", "oblique"])
def test_the_streamed_and_simpleitk_warps_agree(pair, nearest, field_grid, sampler, monkeypatch):
    """The library's warp (torch, or the compiled kernel) and SimpleITK's resampling through the
    same field give the same image, for a field on the fixed box (separable field sampling) and
    on a rotated grid of its own (general sampling; the kernel leaves it to torch), in slabs of 3
    slices (blocks of different sizes through one buffer); an image and its labels warped in one
    pass equal the two warps done alone."""
    from voxelopt import compiled, outputs
    from voxelopt.outputs import GridField, warp_image_itk, warp_images_streamed

    monkeypatch.setattr(outputs, "SLAB_VOXELS", 3 * int(np.prod(pair.fixed.GetSize()[:2])))
    kernel_calls = count_calls(monkeypatch, compiled, "warp_slab")

    result = register(pair.fixed, pair.moving, SMALL.replace(feature_spacing=4.0))
    field_image = result.field
    if field_grid == "oblique":  # the same field on a rotated, shifted grid of another size
        # (covering the fixed box: outside its grid ITK's field transform has no displacement)
        grid = Grid.from_image(field_image)
        rotation = sitk.Euler3DTransform((0, 0, 0), 0.05, -0.03, 0.1)
        reference = sitk.Image([int(n * 1.6) for n in grid.size], sitk.sitkUInt8)
        reference.SetSpacing([s * 0.9 for s in grid.spacing])
        reference.SetDirection(np.asarray(rotation.GetMatrix()))
        reference.SetOrigin(tuple(grid.center() - np.asarray(rotation.GetMatrix()).reshape(3, 3)
                                  @ ((np.asarray(reference.GetSize()) - 1) / 2 * np.asarray(reference.GetSpacing()))))
        field_image = sitk.Resample(field_image, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                                    sitk.sitkVectorFloat32)
    field = GridField.from_image(field_image, torch.device("cpu"))
    image = sitk.Cast(pair.moving_labels, sitk.sitkUInt8) if nearest else sitk.Cast(pair.moving, sitk.sitkInt16)
    grid = Grid.from_image(pair.fixed)
    a = sitk.GetArrayFromImage(warp_image_itk(image, field, grid, nearest, None, None, None))
    b = sitk.GetArrayFromImage(warp_images_streamed([image], field, grid, [nearest], [None], None, None, sampler)[0])
    assert a.dtype == b.dtype == sitk.GetArrayViewFromImage(image).dtype
    assert np.mean(a != b) < 1e-4 and np.abs(a.astype(float) - b).max() <= (0 if nearest else 1)
    assert (len(kernel_calls) > 0) == (sampler == "compiled" and field_grid == "working")
    other = sitk.Cast(pair.moving_labels, sitk.sitkUInt8)
    both = warp_images_streamed([image, other], field, grid, [nearest, True], [None, 0], None, None, sampler)
    alone = warp_images_streamed([other], field, grid, [True], [0], None, None, sampler)[0]
    assert np.array_equal(sitk.GetArrayFromImage(both[0]), b)
    assert np.array_equal(sitk.GetArrayFromImage(both[1]), sitk.GetArrayFromImage(alone))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("dtype, offset", [(np.uint16, 40000), (np.uint32, 3_000_000_000), (np.int16, -30000),
                                           (np.float32, 0.25)])
def test_nearest_warps_keep_every_pixel_type_and_its_values(pair, dtype, offset, sampler):
    """The nearest-neighbour gather reads the voxels in their own type: unsigned 16/32-bit values
    beyond the signed range (torch: through the signed type of the same bits) and their default
    outside the image (the image's minimum) come out as SimpleITK's resampling gives them."""
    from voxelopt.outputs import GridField, warp_image_itk, warp_images_streamed

    field_image = register(pair.fixed, pair.moving, SMALL.replace(feature_spacing=4.0)).field
    rng = np.random.default_rng(1)  # a smooth shift of up to ~20 mm: parts of the grid map outside the image
    shape = sitk.GetArrayViewFromImage(field_image).shape[:3]
    smooth = np.stack([torch.nn.functional.interpolate(torch.as_tensor(c)[None, None], size=shape, mode="trilinear",
                                                       align_corners=True)[0, 0].numpy()
                       for c in rng.normal(0.0, 8.0, (3, 3, 3, 3))], axis=-1) + 12.0
    big = sitk.GetImageFromArray(smooth.astype(np.float32), isVector=True)
    big.CopyInformation(field_image)
    field = GridField.from_image(big, torch.device("cpu"))
    values = sitk.GetArrayFromImage(pair.moving_labels).astype(np.float64) + 1
    image = sitk.GetImageFromArray((values * (1 if dtype == np.float32 else 7) + offset).astype(dtype))
    image.CopyInformation(pair.moving_labels)
    grid = Grid.from_image(pair.fixed)
    lowest = float(sitk.GetArrayViewFromImage(image).min())  # the default outside, beyond int16/int32 for uint16/32
    expected = sitk.GetArrayFromImage(warp_image_itk(image, field, grid, True, lowest, None, None))
    warped = sitk.GetArrayFromImage(warp_images_streamed([image], field, grid, [True], [lowest], None, None, sampler)[0])
    assert warped.dtype == np.dtype(dtype)
    assert np.count_nonzero(expected == dtype(lowest)) > 0.05 * expected.size  # the shift moved points outside
    assert np.mean(warped != expected) < 1e-4


@pytest.mark.parametrize("sampler", ["itk", "compiled"])
@pytest.mark.parametrize("case", ["affine", "translation", "labels at a border", "no label reached"])
def test_labels_through_a_linear_alignment_equal_simpleitk_on_the_whole_grid(pair, case, sampler):
    """The "before" label map (labels through the initial alignment only) is resampled only in the
    box its labels can reach: every labelled voxel of SimpleITK's resampling of the whole grid
    lies in that box, and the two maps are equal."""
    from voxelopt.geometry import affine_transform
    from voxelopt.outputs import aligned_labels, aligned_region

    array = sitk.GetArrayFromImage(pair.moving_labels).astype(np.uint8)
    values, counts = np.unique(array[array > 0], return_counts=True)
    array[array != values[np.argmin(counts)]] = 0  # one small organ: a box well inside the grid
    if case == "labels at a border":
        array[:] = 0
        array[:3, :, -5:] = 7
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(pair.moving_labels)
    rotation = sitk.Euler3DTransform(Grid.from_image(pair.fixed).center(), 0.12, -0.08, 0.2, (4.0, -6.0, 3.0))
    alignment = np.eye(4)
    alignment[:3, :3] = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag([1.08, 0.95, 1.03])
    alignment[:3, 3] = np.asarray(rotation.GetTranslation()) + rotation.GetCenter() - alignment[:3, :3] @ rotation.GetCenter()
    if case == "translation":
        alignment[:3, :3] = np.eye(3)
    if case == "no label reached":
        alignment[:3, 3] += 1000.0
    grid = Grid.from_image(pair.fixed)
    expected = sitk.GetArrayFromImage(sitk.Resample(labels, pair.fixed, affine_transform(alignment),
                                                    sitk.sitkNearestNeighbor, 0, labels.GetPixelID()))
    if sampler == "compiled":
        pytest.importorskip("numba")
    assert np.array_equal(aligned_labels(labels, alignment, grid, sampler), expected)
    region = aligned_region(array, Grid.from_image(labels), alignment, grid)
    outside = np.ones(grid.shape, dtype=bool)
    if region is not None:
        outside[region] = False
    assert not expected[outside].any()  # every labelled voxel lies in the box
    if case == "no label reached":
        assert region is None and not expected.any()
    else:  # the shortcut is taken: a box smaller than the grid, holding labels
        assert expected.any() and np.prod([b.stop - b.start for b in region]) < 0.5 * np.prod(grid.shape), region


def test_the_kernel_and_simpleitk_differ_only_at_half_voxel_ties(pair):
    """Shifted by exactly half a voxel, nearest-neighbour points fall on ties, which floating-point
    rounding breaks either way: the kernel's "before" map differs from SimpleITK's only at fixed
    voxels whose moving index lies within 1e-9 voxel of a half-integer, and there it reads a
    neighbour on the tie."""
    pytest.importorskip("numba")
    from voxelopt.geometry import affine_transform
    from voxelopt.outputs import aligned_labels

    labels, grid = pair.moving_labels, Grid.from_image(pair.fixed)
    moving_grid = Grid.from_image(labels)
    alignment = np.eye(4)
    alignment[:3, 3] = 0.5 * np.asarray(labels.GetSpacing()) * (1, -3, 5)
    expected = sitk.GetArrayFromImage(sitk.Resample(labels, pair.fixed, affine_transform(alignment),
                                                    sitk.sitkNearestNeighbor, 0, labels.GetPixelID()))
    kernel = aligned_labels(labels, alignment, grid, "compiled")
    differ = np.argwhere(kernel != expected)  # (z, y, x)
    assert 0 < len(differ) < 1e-3 * expected.size  # ties exist here, and only they differ
    to_moving, offset = grid.index_map_to(moving_grid, alignment)
    q = differ[:, ::-1] @ to_moving.T + offset  # moving continuous indices (i, j, k)
    tie = np.abs(q - np.floor(q) - 0.5) < 1e-9
    assert tie.any(axis=1).all()
    array = sitk.GetArrayViewFromImage(labels)
    for point, is_tie, value in zip(q, tie, kernel[tuple(differ.T)]):  # a voxel on either side of each tie
        sides = [(np.floor(c), np.ceil(c)) if t else (np.floor(c + 0.5),) for c, t in zip(point, is_tie)]
        reads = {int(array[int(k), int(j), int(i)]) for i in sides[0] for j in sides[1] for k in sides[2]
                 if 0 <= i < array.shape[2] and 0 <= j < array.shape[1] and 0 <= k < array.shape[0]}
        assert int(value) in reads


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("case", ["registration", "large smooth field", "labels at a border", "no label reached",
                                  "field on a shifted grid"])
def test_label_warps_skip_only_voxels_the_labels_cannot_reach(pair, case, sampler):
    """The CPU label warp resamples only the fixed box the field can carry labelled voxels to; the
    result equals SimpleITK's resampling of the whole grid through the same field (also for a
    field on a grid of its own, axis-aligned: the general field sampling, in the box only)."""
    from voxelopt.outputs import GridField, labelled_region, warp_image_itk, warp_images_streamed

    labels = sitk.Cast(pair.moving_labels, sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(labels)
    values, counts = np.unique(array[array > 0], return_counts=True)
    array[array != values[np.argmin(counts)]] = 0  # one small organ: a box well inside the grid
    if case == "labels at a border":
        array[:] = 0
        array[:3, :, :5] = 7  # a corner block: the box must reach the grid's edge
    elif case == "no label reached":
        array[:] = 0
        array[-2:, -2:, -2:] = 3
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(pair.moving_labels)
    field_image = register(pair.fixed, pair.moving, SMALL.replace(feature_spacing=4.0)).field
    if case != "registration":  # a smooth field of up to about 15 mm on the same grid
        rng = np.random.default_rng(3)
        coarse = rng.normal(0.0, 6.0, (3, 4, 4, 4))
        shape = sitk.GetArrayViewFromImage(field_image).shape[:3]
        smooth = np.stack([torch.nn.functional.interpolate(torch.as_tensor(c)[None, None], size=shape, mode="trilinear",
                                                           align_corners=True)[0, 0].numpy() for c in coarse], axis=-1)
        if case == "no label reached":
            smooth = smooth * 0.0 - 60.0  # everything moved far from the corner block
        big = sitk.GetImageFromArray(smooth.astype(np.float32), isVector=True)
        big.CopyInformation(field_image)
        field_image = big
    if case == "field on a shifted grid":  # spacing x 0.9, origin off by 0.37 voxel: not the fixed box
        reference = sitk.Image([int(n * 1.3) + 2 for n in field_image.GetSize()], sitk.sitkUInt8)
        reference.SetSpacing([v * 0.9 for v in field_image.GetSpacing()])
        reference.SetDirection(field_image.GetDirection())
        reference.SetOrigin([o - 0.37 * v for o, v in zip(field_image.GetOrigin(), field_image.GetSpacing())])
        field_image = sitk.Resample(field_image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
    field = GridField.from_image(field_image, torch.device("cpu"))
    grid = Grid.from_image(pair.fixed)
    expected = sitk.Resample(labels, pair.fixed, sitk.DisplacementFieldTransform(sitk.Cast(field_image, sitk.sitkVectorFloat64)),
                             sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    warped = warp_image_itk(labels, field, grid, True, None, None, None)
    assert np.array_equal(sitk.GetArrayFromImage(warped), sitk.GetArrayFromImage(expected))
    streamed = warp_images_streamed([labels], field, grid, [True], [0], None, None, sampler)[0]  # the same box rule
    assert np.array_equal(sitk.GetArrayFromImage(streamed), sitk.GetArrayFromImage(expected))
    box = labelled_region(array, Grid.from_image(labels), field, grid)
    if case == "no label reached":
        assert box is None and not sitk.GetArrayFromImage(expected).any()
    else:  # the shortcut is taken: a box smaller than the grid, holding labels
        assert sitk.GetArrayFromImage(expected).any()
        assert np.prod([b.stop - b.start for b in box]) < 0.5 * np.prod(grid.shape), box


def test_nonzero_extent_of_label_maps_of_every_type():
    """The box of the non-zero voxels, found by max/min reductions, for unsigned, signed (negative
    values only in a corner), float and boolean numpy arrays and torch tensors, and None for an
    empty map."""
    from voxelopt.extent import nonzero_extent

    values = np.zeros((6, 7, 8), np.int16)
    values[1, 2, 3] = 5
    values[4, 6, 7] = -2  # found only through the minimum
    first, last = nonzero_extent(values)
    assert first.tolist() == [1, 2, 3] and last.tolist() == [4, 6, 7]
    for array in (values.astype(np.float32), values != 0):
        assert [v.tolist() for v in nonzero_extent(array)] == [[1, 2, 3], [4, 6, 7]]
    unsigned = np.abs(values).astype(np.uint16)
    assert [v.tolist() for v in nonzero_extent(unsigned)] == [[1, 2, 3], [4, 6, 7]]
    assert nonzero_extent(np.zeros((3, 3, 3), np.uint8)) is None
    # torch tensors (the label scorer's maps, on the CPU or CUDA) by the same rule
    for array in (values, values.astype(np.float32), values != 0, np.abs(values).astype(np.uint8)):
        assert [v.tolist() for v in nonzero_extent(torch.from_numpy(array))] == [[1, 2, 3], [4, 6, 7]]
    assert nonzero_extent(torch.zeros((3, 3, 3), dtype=torch.uint8)) is None
    assert nonzero_extent(np.zeros((0, 3, 3), np.uint8)) is None


@pytest.mark.parametrize("heavy", [False, True])
def test_a_core_is_kept_for_the_affine_stage_only_beside_light_features(pair, heavy, monkeypatch):
    """While the affine stage runs beside the fixed image's features, light features (MIND, raw)
    leave it a core; network features (seconds of every core) do not: one core would double
    their time while the other idles once the affine stage is done. The affine stage is slowed
    down here so that it is surely still running when the features start."""
    import time

    from voxelopt import device as device_module
    from voxelopt import pipeline
    from voxelopt.features import base
    from voxelopt.features.intensity import RawIntensity
    from voxelopt.networks.base import NetworkExtractor

    class HeavyRaw(RawIntensity):
        pass

    HeavyRaw.heavy = True
    monkeypatch.setitem(base._REGISTRY, "test_heavy_raw", lambda config: HeavyRaw(config.hu_window))  # this test only
    real_align, real_core = pipeline.align, device_module.one_core_left
    monkeypatch.setattr(pipeline, "align", lambda *args: (time.sleep(1.0), real_align(*args))[1])
    asked = []
    monkeypatch.setattr(device_module, "one_core_left", lambda enabled=True: (asked.append(enabled), real_core(enabled))[1])
    features = "test_heavy_raw" if heavy else "raw"
    register(pair.fixed, pair.moving, SMALL.replace(features=features, init="affine", device="cpu"))
    assert asked == [not heavy]
    assert NetworkExtractor.heavy and not RawIntensity.heavy


def test_outputs_are_written_straight_into_new_images():
    """``writable_array`` is a view of a new image's own voxels (K, J, I), in its pixel type."""
    from voxelopt.io import writable_array

    image = sitk.Image([5, 4, 3], sitk.sitkUInt16)
    array = writable_array(image)
    assert array.shape == (3, 4, 5) and array.dtype == np.uint16 and not array.any()
    array[2, 1, 4] = 65000
    assert image[4, 1, 2] == 65000 and int(sitk.GetArrayViewFromImage(image).sum()) == 65000


def test_images_not_in_hounsfield_units_are_reported(pair):
    """CT stored without its rescale intercept (air at 0 instead of -1000) registers without an
    error but badly: each such image gets a warning naming it and the way out, kept in the result."""
    import warnings

    from voxelopt import InputWarning

    raw = [sitk.Cast(image + 1024.0, sitk.sitkFloat32) for image in (pair.fixed, pair.moving)]
    with pytest.warns(InputWarning) as caught:
        result = register(*raw, SMALL)
    messages = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    assert [m.split(":")[0] for m in messages] == ["fixed image", "moving image"]
    assert "--hu-window" in messages[0] and "lowest 24" in messages[0]  # the phantom's air is -1000
    assert result.warnings == messages and result.summary()["warnings"] == messages
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # none for CT in HU, or a window set to the values
        assert register(pair.fixed, pair.moving, SMALL).warnings == []
        assert register(*raw, SMALL.replace(hu_window=(224.0, 1524.0))).warnings == []


@pytest.mark.parametrize("arguments, message", [
    ({"progress": 5}, "progress must be a function, called as progress(fraction, message), or None; got int"),
    ({"cancel": "no"}, "cancel must be a function, called as cancel(), or None; got str"),
    ({"cache": {}}, "cache must be a voxelopt.FeatureCache (e.g. voxelopt.FeatureCache()) or None; got dict"),
])
def test_callbacks_and_caches_of_the_wrong_kind_are_clear_errors(pair, arguments, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        register(pair.fixed, pair.moving, SMALL, **arguments)


@pytest.mark.parametrize("value", [-1024.0, 800.0])
def test_an_image_with_no_voxel_inside_the_intensity_window_is_refused(pair, value):
    """An empty scan (all air) or one wholly above the window has constant features: with any
    preset the field would be arbitrary (a constant -1024 fixed image with ``paper`` moved by
    117 mm on average), so the image is refused by name before any work, the affine stage's
    too."""
    flat = sitk.Image(pair.fixed.GetSize(), sitk.sitkInt16) + int(value)
    flat.CopyInformation(pair.fixed)
    expected = rf"has no voxel inside the intensity window -800 to 500 \(its voxels lie from {value:g} to {value:g}\)"
    for config in (SMALL, SMALL.replace(init="affine"), SMALL.replace(init="com")):
        with pytest.raises(InputError, match="the fixed image " + expected):
            register(flat, pair.moving, config)
        with pytest.raises(InputError, match="the moving image " + expected):
            register(pair.fixed, flat, config)


def test_a_pair_in_different_intensity_units_is_refused(pair):
    """One image in HU, the other stored without its rescale intercept (no voxel below 0): one
    window cannot serve both, so the pair is refused, naming the odd image and the way out; a
    window that starts at or above 0 (the user's choice for such data) lets it through."""
    raw = sitk.Cast(pair.moving + 1024.0, sitk.sitkUInt16)
    with pytest.raises(InputError, match=r"the moving image has no voxel below 0 \(lowest \d+, .*\) while the fixed "
                                         r"image is in Hounsfield units \(lowest -1000\).*- 1024"):
        register(pair.fixed, raw, SMALL)
    with pytest.raises(InputError, match="the fixed image has no voxel below 0"):
        register(raw, pair.fixed, SMALL)
    assert register(pair.fixed, raw, SMALL.replace(hu_window=(0.0, 1524.0))).warnings == []


@pytest.mark.parametrize("geometry, message", [
    (dict(spacing=(2.0, 0.0, 2.0)), r"an image array has an invalid spacing \(2.0, 0.0, 2.0\) \(must be finite and > 0 mm\)"),
    (dict(spacing=(2.0, 2.0)), r"an image's spacing must be 3 numbers, got \(2.0, 2.0\)"),
    (dict(origin=(0.0, np.nan, 0.0)), r"an image array has a non-finite origin \(0.0, nan, 0.0\)"),
    (dict(direction=np.zeros(9)), "an image array has an invalid direction matrix: its axes are not orthonormal"),
])
def test_array_images_with_a_geometry_simpleitk_cannot_hold_are_input_errors(geometry, message):
    with pytest.raises(InputError, match=message):
        ArrayImage(np.zeros((4, 5, 6), np.int16), **geometry).to_sitk()


def test_array_images_of_bool_and_float16_become_types_simpleitk_holds():
    assert ArrayImage(np.ones((4, 5, 6), bool)).to_sitk().GetPixelID() == sitk.sitkUInt8
    assert ArrayImage(np.ones((4, 5, 6), np.float16)).to_sitk().GetPixelID() == sitk.sitkFloat32
    assert ArrayImage(np.ones((4, 5, 6), np.int8)).to_sitk().GetPixelID() == sitk.sitkInt8
    with pytest.raises(InputError, match="must hold integers or floats, got complex64"):
        ArrayImage(np.ones((4, 5, 6), np.complex64)).to_sitk()


def test_wrong_kinds_of_config_and_initial_transform_are_clear_errors(pair):
    with pytest.raises(ConfigError, match=r"config must be a RegistrationConfig .* got dict"):
        register(pair.fixed, pair.moving, {"alpha": 2.0})
    with pytest.raises(InputError, match="initial transform must be a linear SimpleITK transform or an ITK transform file, got ndarray"):
        register(pair.fixed, pair.moving, SMALL.replace(init="none"), initial_transform=np.eye(4))


def test_result_warp_takes_any_image_like_and_refuses_other_images(pair, tmp_path):
    result = register(pair.fixed, pair.moving, SMALL)
    path = tmp_path / "moving.nii.gz"
    sitk.WriteImage(pair.moving, str(path))
    from_file = result.warp(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_file), sitk.GetArrayFromImage(result.warped))
    with pytest.raises(InputError, match="image to warp must be a 3-D image"):
        result.warp(pair.moving[:, :, 3])
    with pytest.raises(InputError, match="image to warp must be a SimpleITK image, an ArrayImage or a file path"):
        result.warp(np.zeros((4, 4, 4)))
    complex_image = sitk.RealAndImaginaryToComplex(sitk.Cast(pair.moving, sitk.sitkFloat32), sitk.Cast(pair.moving, sitk.sitkFloat32))
    with pytest.raises(InputError, match="image to warp has complex of 32-bit float voxels"):
        result.warp(complex_image)
    elsewhere = sitk.Image(pair.moving)
    elsewhere.SetOrigin(tuple(np.asarray(pair.moving.GetOrigin()) + 1000.0))  # an image of another space
    with pytest.raises(InputError, match="image to warp does not overlap the region the field maps the fixed grid to"):
        result.warp(elsewhere)
    holes = sitk.Cast(pair.moving, sitk.sitkFloat32)
    holes[3, 4, 5] = float("nan")  # trilinear sampling would spread it over its neighbours
    with pytest.raises(InputError, match="image to warp contains 1 NaN or infinite voxel"):
        result.warp(holes)
    corner = pair.moving[:8, :8, :8]  # a part of the moving space is warped, outside it the background
    assert sitk.GetArrayFromImage(result.warp(corner)).shape == sitk.GetArrayFromImage(result.warped).shape


def test_the_result_prints_as_one_line_of_its_grid_scores_and_time(pair):
    result = register(pair.fixed, pair.moving, SMALL, pair.fixed_labels, pair.moving_labels)
    text = repr(result)
    size = "x".join(str(n) for n in result.field.GetSize())
    assert text.startswith(f"RegistrationResult(field {size} at ") and "\n" not in text
    assert f"dice_mean {result.metrics['dice_mean']:.3f}" in text and f"{result.timings['total']:.1f} s on cpu" in text
    assert "Swig" not in text and "Image" not in text and len(text) < 200


def test_register_holds_the_views_stable_for_the_whole_operation(pair):
    """register() is one library operation (``voxels.stable_views``): its images' views are kept
    from start to end, and forgotten after it."""
    from voxelopt import voxels

    seen = []
    register(pair.fixed, pair.moving, SMALL, progress=lambda fraction, message: seen.append(voxels._operations))
    assert seen and min(seen) >= 1
    assert voxels._operations == 0


def test_features_that_are_not_finite_are_an_error_not_a_nan_field(pair, monkeypatch):
    """A broken network (TorchScript model or weights) that returns NaN: the solver would make a NaN
    field of it, written as a file that readers take for the identity."""
    from voxelopt.features.base import FeatureExtractor

    plain = FeatureExtractor.extract_resized

    def broken(self, image, device, shape):
        features = plain(self, image, device, shape)
        features[0, 0, 1, 2, 3] = float("nan")
        return features

    monkeypatch.setattr(FeatureExtractor, "extract_resized", broken)
    with pytest.raises(ConfigError, match="the fixed image's 'mind' features hold NaN or Inf values"):
        register(pair.fixed, pair.moving, SMALL)


@pytest.mark.parametrize("which", ["fixed", "moving"])
def test_a_single_slice_is_refused_before_any_work(pair, which):
    """One thick slice passed the grid checks and failed after the registration (the Jacobian)."""
    thin = sitk.Image(pair.fixed[:, :, 20:21])
    thin.SetSpacing((3.0, 3.0, 8.0))
    fixed, moving = (thin, pair.moving) if which == "fixed" else (pair.fixed, thin)
    with pytest.raises(InputError, match=f"{which} image is a single slice \\(size 64 x 56 x 1\\)"):
        register(fixed, moving)


def test_an_image_stored_in_metres_is_named_as_such(pair):
    """A scan whose spacing is in metres is a fraction of a millimetre across: the error about the
    too small grid says so, and a run that gets further warns first."""
    fixed, moving = (sitk.Image(image) for image in (pair.fixed, pair.moving))
    for image in (fixed, moving):
        image.SetSpacing([s / 1000 for s in image.GetSpacing()])
        image.SetOrigin([o / 1000 for o in image.GetOrigin()])
    with pytest.raises(InputError, match=r"too small.*The fixed image is only 0.192 x 0.168 x 0.144 mm across "
                                         r"\(spacing 0.003 x 0.003 x 0.003\): is its spacing in metres"):
        register(fixed, moving)
    assert voxelopt.inputs.input_warnings(pair.fixed, pair.moving, (-800.0, 500.0)) == []
    notes = voxelopt.inputs.input_warnings(fixed, pair.moving, (-800.0, 500.0))
    assert len(notes) == 1 and notes[0].startswith("the fixed image is only 0.192 x")


def test_output_options_of_the_wrong_type_are_input_errors(pair, tmp_path):
    """``labels="no"`` or ``full_size_maps="no"`` would count as true; a number is no list of
    outputs; None is no format: each is an InputError naming the argument, and nothing is written."""
    result = register(pair.fixed, pair.moving, SMALL)
    with pytest.raises(InputError, match="labels must be True or False, got 'no'"):
        result.warp(pair.moving, labels="no")
    with pytest.raises(InputError, match="full_size must be True or False"):
        result.output_image("jacobian", full_size=1)
    out = tmp_path / "out"
    for kwargs, message in (({"outputs": 5}, "outputs must be output names"),
                            ({"outputs": ["field", 3]}, "outputs must be output names"),
                            ({"image_format": None}, "the image format must be a name such as 'nii.gz', got None"),
                            ({"full_size_maps": "no"}, "full_size_maps must be True or False")):
        with pytest.raises(InputError, match=message):
            result.save(out, **kwargs)
    assert not out.exists()
    assert result.warp(pair.moving, labels=np.bool_(False)).GetSize() == pair.fixed.GetSize()


def test_output_image_refuses_an_unknown_name(pair):
    result = register(pair.fixed, pair.moving, SMALL)
    assert result.output_image("entropy").GetSize() == result.entropy.GetSize()
    for key in ("field", "Entropy", "warped_labels", "labels"):  # labels: none were given
        with pytest.raises(InputError, match="unknown output image|needs moving labels"):
            result.output_image(key)
