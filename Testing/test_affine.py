"""Affine pre-alignment recovers a known affine ; ITK linear transform files."""

import numpy as np
import pytest
import SimpleITK as sitk

from testdata import oblique_direction, shared_path
from voxelopt import InputError
from voxelopt.affine import estimate_affine, linear_to_affine, plausible_linear, read_initial_transform
from voxelopt.phantom import phantom

AIR = -1024.0


def known_affine(centre) -> sitk.AffineTransform:
    """Fixed -> moving: rotation (4, -3, 10 degrees), scaling up to 5 %, shear 2-3 %, translation ~11 mm."""
    rotation = np.asarray(oblique_direction((4.0, -3.0, 10.0))).reshape(3, 3)
    shear = np.array([[1.0, 0.03, 0.0], [0.0, 1.0, -0.02], [0.02, 0.0, 1.0]])
    transform = sitk.AffineTransform(3)
    transform.SetCenter(centre)
    transform.SetMatrix((rotation @ np.diag([1.05, 0.96, 1.03]) @ shear).ravel().tolist())
    transform.SetTranslation((8.0, -6.0, 5.0))
    return transform


def centre_of(image: sitk.Image):
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])


def point_errors(estimate: sitk.Transform, truth: sitk.Transform, fixed: sitk.Image):
    """Mean and max distance (mm) between the two transforms' images of the fixed body voxels (> -500 HU)."""
    index_zyx = np.argwhere(sitk.GetArrayViewFromImage(fixed) > -500.0)
    index_xyz = index_zyx[:, ::-1].astype(np.float64)
    matrix = np.asarray(fixed.GetDirection()).reshape(3, 3) * np.asarray(fixed.GetSpacing())
    points = index_xyz @ matrix.T + np.asarray(fixed.GetOrigin())

    def apply(transform):
        affine = linear_to_affine(transform)
        return points @ np.asarray(affine.GetMatrix()).reshape(3, 3).T + np.asarray(affine.TransformPoint((0.0, 0.0, 0.0)))

    distances = np.linalg.norm(apply(estimate) - apply(truth), axis=1)
    return float(distances.mean()), float(distances.max())


def thin_slab(image: sitk.Image, first: int, count: int) -> sitk.Image:
    """``image`` with only ``count`` axial slices from ``first`` kept (the rest air): a thin field of view."""
    array = sitk.GetArrayFromImage(image)
    array[:first] = AIR
    array[first + count:] = AIR
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


@pytest.fixture(scope="module")
def phantom_case():
    moving, _ = phantom(size=(72, 64, 56), spacing=(3.0, 3.0, 3.0), seed=3)
    truth = known_affine(centre_of(moving))
    fixed = sitk.Resample(moving, moving, truth, sitk.sitkLinear, AIR)
    return fixed, moving, truth


def test_recovers_a_known_affine_on_a_phantom(phantom_case):
    fixed, moving, truth = phantom_case
    mean, worst = point_errors(estimate_affine(fixed, moving), truth, fixed)
    assert mean <= 0.5 and worst <= 0.5, (mean, worst)


def test_recovers_a_known_affine_from_a_thin_field_of_view(phantom_case):
    fixed, moving, truth = phantom_case
    slab = thin_slab(fixed, 21, 15)  # 45 mm of 168 mm scanned
    mean, worst = point_errors(estimate_affine(slab, moving), truth, slab)
    assert mean <= 0.5 and worst <= 1.0, (mean, worst)


@pytest.mark.parametrize("first,count", [(26, 1), (26, 3), (24, 6)])
def test_recovers_a_known_affine_from_a_slab_on_its_own_short_grid(phantom_case, first, count):
    """A scan of a few slices stored on a grid of its own (not padded with air onto a taller
    one): fewer than 4 voxels along z at the metric's voxel size failed in ITK's smoothing."""
    fixed, moving, truth = phantom_case
    slab = fixed[:, :, first:first + count]  # 3 to 18 mm
    mean, worst = point_errors(estimate_affine(slab, moving), truth, slab)
    assert mean <= 0.5 and worst <= 1.0, (mean, worst)


def test_a_mirrored_or_overscaled_estimate_falls_back_to_the_rigid_one(phantom_case, monkeypatch):
    """The affine stage's result is kept only when plausible for anatomy; otherwise the rigid
    estimate it started from is returned (a thin slab once gave a z-mirroring matrix: every
    voxel folded)."""
    from voxelopt import affine

    fixed, moving, _ = phantom_case
    rigid_results = []
    register = affine._register

    def mirrored_affine(fixed_small, moving_small, fixed_region, moving_region, transform, iterations, masked=False):
        out = register(fixed_small, moving_small, fixed_region, moving_region, transform, iterations, masked)
        if isinstance(out, sitk.Euler3DTransform):
            rigid_results.append(np.asarray(out.GetMatrix()))
        else:
            out.SetMatrix((np.asarray(out.GetMatrix()).reshape(3, 3) @ np.diag([1.0, 1.0, -1.0])).ravel().tolist())
        return out

    monkeypatch.setattr(affine, "_register", mirrored_affine)
    estimate = estimate_affine(fixed, moving)
    assert len(rigid_results) == 1
    assert np.allclose(np.asarray(estimate.GetMatrix()), rigid_results[0])


def test_plausible_linear():
    assert plausible_linear(np.diag([1.2, 0.8, 1.0]))
    assert not plausible_linear(np.diag([1.0, 1.0, -1.0]))  # a mirror
    assert plausible_linear(np.diag([1.0, 2.5, 0.4]))
    assert not plausible_linear(np.diag([1.0, 3.5, 1.0]))  # scaled beyond MAX_SCALE (3)
    assert not plausible_linear(np.diag([1.0, 1.0, 0.3]))
    assert not plausible_linear(np.array([[1.0, 3.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))  # sheared: singular values 3.3, 0.3


def test_recovers_a_known_affine_on_real_ct():
    moving = sitk.ReadImage(str(shared_path("data", "totalseg_ct", "A_img.nii.gz")), sitk.sitkFloat32)
    truth = known_affine(centre_of(moving))
    fixed = sitk.Resample(moving, moving, truth, sitk.sitkLinear, AIR)
    mean, worst = point_errors(estimate_affine(fixed, moving), truth, fixed)
    # The metric samples 50 000 of the 164 000 voxels at 4 mm with jitter, so the fixed image is
    # interpolated between its voxels: sampling every voxel gives 0.14 / 0.25 mm here, this 0.42 / 1.29.
    assert mean <= 0.5 and worst <= 1.5, (mean, worst)
    slab = thin_slab(fixed, 14, 20)  # 40 mm of 96 mm, like the real pair B
    mean, worst = point_errors(estimate_affine(slab, moving), truth, slab)
    assert mean <= 0.5 and worst <= 1.0, (mean, worst)


def test_the_estimate_is_reproducible_and_leaves_the_thread_setting(phantom_case):
    fixed, moving, _ = phantom_case
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    runs = [estimate_affine(fixed, moving).GetParameters() for _ in range(3)]
    # ITK's multi-threaded Mattes metric gave parameters differing in the 9th digit from run to run
    assert runs[0] == runs[1] == runs[2]
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads


@pytest.mark.parametrize("fixed_order, moving_order", [("RAS", "LPS"), ("PLS", "SAR"), ("LPS", "RAI")])
def test_the_estimate_does_not_depend_on_the_storage_order(phantom_case, fixed_order, moving_order):
    """The same physical images stored flipped or with permuted axes give the same transform (the
    metric's regular samples and the box shrink follow the storage order unless the stage
    reorders the voxels: without it the estimates differed by up to 0.46-0.55 mm here)."""
    fixed, moving, _ = phantom_case
    reference = estimate_affine(fixed, moving)
    estimate = estimate_affine(sitk.DICOMOrient(fixed, fixed_order), sitk.DICOMOrient(moving, moving_order))
    mean, worst = point_errors(estimate, reference, fixed)
    assert worst < 1e-3, (mean, worst)


def test_an_initial_transform_is_the_starting_point(phantom_case):
    fixed, moving, truth = phantom_case
    # a moving image with a placeholder origin 300 mm away: the initial transform carries it
    shifted = sitk.Image(moving)
    shifted.SetOrigin(tuple(np.asarray(moving.GetOrigin()) + (300.0, 0.0, -200.0)))
    offset = sitk.TranslationTransform(3, (300.0, 0.0, -200.0))
    expected = sitk.CompositeTransform([offset, truth])  # fixed -> moving, then moving -> shifted moving
    initial = sitk.CompositeTransform([offset, sitk.Euler3DTransform()])
    mean, worst = point_errors(estimate_affine(fixed, shifted, initial=initial), expected, fixed)
    assert mean <= 0.5 and worst <= 0.5, (mean, worst)


def test_bad_inputs_are_reported(phantom_case):
    fixed, moving, _ = phantom_case
    air = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + AIR
    air.CopyInformation(moving)
    with pytest.raises(InputError, match="no voxel inside the HU window"):
        estimate_affine(fixed, air)
    flat = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 40.0
    flat.CopyInformation(moving)
    with pytest.raises(InputError, match="moving image is uniform"):
        estimate_affine(fixed, flat)
    with pytest.raises(InputError, match="low < high"):
        estimate_affine(fixed, moving, window=(500.0, -800.0))
    empty = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(fixed)
    with pytest.raises(InputError, match="fixed mask is empty"):
        estimate_affine(fixed, moving, fixed_mask=empty)
    with pytest.raises(InputError, match="not linear"):
        estimate_affine(fixed, moving, initial=sitk.BSplineTransform(3))
    tiny = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    tiny.CopyInformation(fixed)
    centre = [n // 2 for n in fixed.GetSize()]
    tiny[centre] = 1  # one voxel: nothing of it, or one voxel, at the 4 mm analysis spacing
    with pytest.raises(InputError, match="fixed mask is too small|fixed image has 1 voxel"):
        estimate_affine(fixed, moving, fixed_mask=tiny)


# ====================================================================== transform files
def linear_transforms():
    euler = sitk.Euler3DTransform((10.0, -5.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, -6.0))
    similarity = sitk.Similarity3DTransform()
    similarity.SetScale(1.1)
    similarity.SetRotation((0.0, 0.0, 1.0), 0.4)
    similarity.SetTranslation((1.0, 2.0, 3.0))
    similarity.SetCenter((-20.0, 0.0, 15.0))
    affine = known_affine((5.0, -7.0, 9.0))
    return {
        "translation": sitk.TranslationTransform(3, (12.0, -3.5, 7.25)),
        "euler": euler,
        "similarity": similarity,
        "affine": affine,
        "composite": sitk.CompositeTransform([sitk.TranslationTransform(3, (3.0, 0.0, -1.0)), euler, affine]),
    }


POINTS = [(0.0, 0.0, 0.0), (100.0, -50.0, 20.0), (-80.0, 30.0, -120.0)]


@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".h5"])
@pytest.mark.parametrize("kind", ["translation", "euler", "similarity", "affine", "composite"])
def test_read_initial_transform_round_trips(tmp_path, kind, suffix):
    transform = linear_transforms()[kind]
    path = tmp_path / f"initial{suffix}"
    sitk.WriteTransform(transform, str(path))
    read = read_initial_transform(path)
    assert isinstance(read, sitk.AffineTransform)
    for point in POINTS:
        assert np.allclose(read.TransformPoint(point), transform.TransformPoint(point), atol=1e-6)


@pytest.mark.parametrize("kind", ["translation", "euler", "affine"])
def test_read_initial_transform_reads_matlab_files(tmp_path, kind):
    """ANTs writes its linear stage as a MATLAB .mat (ITK can write single transforms only there)."""
    transform = linear_transforms()[kind]
    sitk.WriteTransform(transform, str(tmp_path / "initial.mat"))
    read = read_initial_transform(tmp_path / "initial.mat")
    for point in POINTS:
        assert np.allclose(read.TransformPoint(point), transform.TransformPoint(point), atol=1e-6)


def test_read_initial_transform_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_initial_transform(tmp_path / "missing.tfm")
    with pytest.raises(InputError, match="is a folder; give the transform file"):
        read_initial_transform(tmp_path)
    two = tmp_path / "two.tfm"  # two transforms one after the other, not a composite: ITK would read the first
    sitk.WriteTransform(sitk.TranslationTransform(3, (5.0, 0.0, -6.0)), str(tmp_path / "a.tfm"))
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tmp_path / "b.tfm"))
    second = (tmp_path / "b.tfm").read_text().split("\n", 1)[1].replace("#Transform 0", "#Transform 1")
    two.write_text((tmp_path / "a.tfm").read_text() + second)
    with pytest.raises(InputError, match="holds 2 transforms one after the other"):
        read_initial_transform(two)
    garbage = tmp_path / "garbage.tfm"
    garbage.write_text("this is not a transform\n")
    with pytest.raises(InputError, match="cannot read initial transform"):
        read_initial_transform(garbage)
    field = sitk.Image([8, 8, 8], sitk.sitkVectorFloat64, 3)
    sitk.WriteTransform(sitk.DisplacementFieldTransform(field), str(tmp_path / "field.h5"))
    with pytest.raises(InputError, match="not linear"):
        read_initial_transform(tmp_path / "field.h5")
    sitk.WriteTransform(sitk.Euler2DTransform(), str(tmp_path / "flat.tfm"))
    with pytest.raises(InputError, match="2-D"):
        read_initial_transform(tmp_path / "flat.tfm")
    image = sitk.Image([4, 4, 4], sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    with pytest.raises(InputError, match=r"image.nii.gz: not an ITK transform file \(.tfm, .txt, .h5, .hdf5 or .mat\)$"):
        read_initial_transform(tmp_path / "image.nii.gz")


@pytest.mark.parametrize("matrix, message", [
    ([0.0] * 9, "is singular"),
    ([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1e-9], "is singular"),
    ([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "mirrors space .* RAS and LPS"),
    ([10.0, 0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 10.0], r"scales by 10 to 10 along some direction, beyond the 0.333 to 3"),
    ([1.0, 0.0, 0.0, 0.0, np.nan, 0.0, 0.0, 0.0, 1.0], "holds infinite or NaN values"),
])
def test_initial_transforms_that_cannot_align_anatomy_are_refused(tmp_path, phantom_case, matrix, message):
    """A singular, mirroring or wildly scaling user transform (its file, or the transform itself
    given to the affine stage) is refused with the reason: through it the registration folds
    every voxel or fails later with a message about something else; a plausible one passes."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix)
    transform.SetTranslation((191.0, 159.0, 47.0))
    if np.isfinite(matrix).all():
        sitk.WriteTransform(transform, str(tmp_path / "initial.tfm"))
        with pytest.raises(InputError, match=f"the initial transform .*initial.tfm {message}"):
            read_initial_transform(tmp_path / "initial.tfm")
    fixed, moving, _ = phantom_case
    with pytest.raises(InputError, match=f"the initial transform {message}"):
        estimate_affine(fixed, moving, initial=transform)
    transform.SetMatrix([1.2, 0.1, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 1.1])  # scaled and sheared, within any anatomy
    sitk.WriteTransform(transform, str(tmp_path / "plausible.tfm"))
    assert np.allclose(read_initial_transform(tmp_path / "plausible.tfm").GetMatrix(), transform.GetMatrix())


def test_concurrent_estimates_restore_the_thread_setting(phantom_case):
    import threading

    fixed, moving, _ = phantom_case
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    results = []
    workers = [threading.Thread(target=lambda: results.append(estimate_affine(fixed, moving).GetParameters()))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads


@pytest.mark.parametrize("shape", [(30, 20, 22), (31, 21, 23)])
def test_centre_of_mass_does_not_depend_on_how_the_image_is_stored(shape):
    """The ``com`` start reads every 2nd voxel: each read voxel must stand for its block's centre,
    else the centre moves by half a voxel towards index 0 (a body reaching the image's edge, as CT
    does along z, then gives another start when the same image is stored flipped)."""
    from voxelopt.inputs import _centre_of_mass

    uniform = sitk.GetImageFromArray(np.zeros(shape, np.float32))  # 0 HU everywhere: the centre is the grid's
    uniform.SetSpacing((0.8, 0.9, 2.5))
    uniform.SetOrigin((10.0, -20.0, 30.0))
    uniform.SetDirection(oblique_direction())
    exact = np.asarray(uniform.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in uniform.GetSize()]))
    np.testing.assert_allclose(_centre_of_mass(uniform, (-1000.0, 1000.0)), exact, atol=1e-6)
    body, _ = phantom(size=shape[::-1], spacing=(0.8, 0.9, 2.5))  # a body that fills the slices along z
    flipped = sitk.Flip(body, [False, False, True])  # the same physical image, stored the other way round
    gap = np.abs(_centre_of_mass(body, (-1000.0, 1000.0)) - _centre_of_mass(flipped, (-1000.0, 1000.0)))
    assert gap.max() < 0.1 * 2.5
