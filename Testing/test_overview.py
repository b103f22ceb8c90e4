"""The QA overview picture: display orientation, edge letters, the PNG itself."""

import numpy as np
import pytest
import SimpleITK as sitk

from testdata import make_image, oblique_direction
from voxelopt import InputError
from voxelopt.overview import direction_letters, save_overview, slice_layout

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_identity_direction_is_shown_radiologically():
    axial, coronal, sagittal = (slice_layout(IDENTITY, view) for view in ("axial", "coronal", "sagittal"))
    # letters at the (left, right, top, bottom) screen edges
    assert axial.letters == ("R", "L", "A", "P")
    assert coronal.letters == ("R", "L", "S", "I")
    assert sagittal.letters == ("A", "P", "S", "I")
    # array axes (0 = z, 1 = y, 2 = x): axial cuts z and shows y down, x across, unflipped
    assert (axial.slice_axis, axial.row_axis, axial.col_axis, axial.row_flip, axial.col_flip) == (0, 1, 2, False, False)
    # coronal and sagittal show z upside down (superior at the top)
    assert (coronal.slice_axis, coronal.row_axis, coronal.row_flip) == (1, 0, True)
    assert (sagittal.slice_axis, sagittal.row_axis, sagittal.col_axis, sagittal.row_flip) == (2, 0, 1, True)


def test_flipped_and_permuted_directions_are_undone_on_screen():
    # stored RAS-like: x runs to the patient's right, y to anterior
    flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    axial = slice_layout(flipped, "axial")
    assert axial.letters == ("R", "L", "A", "P") and axial.col_flip and axial.row_flip
    # a sagittally stored volume: index i runs posterior, j inferior, k to the patient's left
    permuted = np.column_stack([(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)]).ravel()
    axial, coronal = slice_layout(permuted, "axial"), slice_layout(permuted, "coronal")
    assert axial.letters == ("R", "L", "A", "P") and coronal.letters == ("R", "L", "S", "I")
    assert (axial.slice_axis, axial.row_axis, axial.col_axis) == (1, 2, 0)  # cut across j (array axis 1)
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)  # (k, j, i)
    plane = axial.plane(volume)
    assert plane.shape == (6, 4)  # rows along i (anterior to posterior), columns along k (right to left)
    assert plane[0, 0] == volume[0, 2, 0] and plane[-1, -1] == volume[-1, 2, -1]
    # the same physical volume stored the plain way shows the same pixels
    lps = np.transpose(volume, (1, 2, 0))[::-1]  # the same voxels in (z, y, x) LPS order: z = -j, y = i, x = k
    assert np.array_equal(slice_layout(IDENTITY, "axial").plane(lps, index=2), plane)


def test_oblique_edges_get_two_letters():
    assert direction_letters((1.0, 0.0, 0.0)) == "L"
    assert direction_letters((-0.5, -0.866, 0.0)) == "AR"
    assert direction_letters((0.98, 0.0, -0.17)) == "L"  # 10 degrees off: one letter
    rotated = oblique_direction((0.0, 0.0, 30.0))
    letters = slice_layout(rotated, "axial").letters
    assert [len(v) for v in letters] == [2, 2, 2, 2] and letters[0][0] == "R" and letters[2][0] == "A"


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    fixed = make_image(rng.uniform(-200, 300, (20, 24, 28)).astype(np.float32), spacing=(2.0, 2.0, 3.0))
    labels = np.zeros((20, 24, 28), np.uint8)
    labels[5:15, 6:18, 8:20] = 3
    fixed_labels = make_image(labels, spacing=(2.0, 2.0, 3.0))
    return fixed, fixed_labels


def test_writes_a_png_with_one_row_per_image(tmp_path, images):
    import matplotlib.image

    fixed, labels = images
    moving = make_image(np.zeros((10, 12, 14), np.float32), spacing=(4.0, 4.0, 6.0), origin=(5.0, 0.0, 0.0))
    small = save_overview(tmp_path / "small.png", fixed, moving, fixed)
    full = save_overview(tmp_path / "full.png", fixed, moving, fixed, labels, labels, fixed, fixed, note="a note")
    assert small.read_bytes()[:8] == full.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    small_px, full_px = matplotlib.image.imread(small), matplotlib.image.imread(full)
    # 5 rows (fixed, before, after, checkerboard, difference) vs 8 (+ outlines, volume change, uncertainty)
    assert full_px.shape[0] / small_px.shape[0] == pytest.approx(8 / 5, rel=0.05)


def test_maps_on_a_coarser_grid_of_the_same_box_are_shown(tmp_path, images):
    import matplotlib.image

    fixed, labels = images
    coarse = sitk.BinShrink(fixed, [2, 2, 2])  # the same box at twice the spacing
    assert coarse.GetSize() != fixed.GetSize()
    path = save_overview(tmp_path / "coarse.png", fixed, fixed, fixed, labels, labels, coarse, coarse)
    reference = save_overview(tmp_path / "fine.png", fixed, fixed, fixed, labels, labels, fixed, fixed)
    assert matplotlib.image.imread(path).shape == matplotlib.image.imread(reference).shape


def test_unknown_view_is_an_input_error():
    with pytest.raises(InputError, match="unknown view"):
        slice_layout(IDENTITY, "oblique")
