"""voxelopt.voxels: views of SimpleITK images that a filter running on another thread cannot move."""

import re
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from voxelopt import voxels

ROOT = Path(__file__).resolve().parents[1]


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def test_one_view_per_image_object_within_an_operation():
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    with voxels.stable_views():
        first = voxels.view(image)
        assert voxels.view(image) is first
        with voxels.stable_views():  # nested operations count once
            assert voxels.view(image) is first
        assert voxels.view(image) is first
        other = sitk.Image(image)  # a second image object sharing the buffer gets its own view
        assert voxels.view(other) is not first
        np.testing.assert_array_equal(voxels.view(other), first)
    assert not first.flags.writeable
    np.testing.assert_array_equal(first, np.arange(24).reshape(2, 3, 4))
    copied = voxels.copy(image)
    assert copied.flags.writeable and _address(copied) != _address(first)
    np.testing.assert_array_equal(copied, first)


def test_after_an_operation_an_edited_image_is_read_as_it_now_is():
    """An image whose buffer a copy shares gets a buffer of its own when edited (copy on write):
    a view kept from an earlier operation would read the copy's voxels, or freed memory."""
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16))
    with voxels.stable_views():
        before = voxels.view(image)
    kept = sitk.Image(image)
    image[0, 0, 0] = 7
    assert voxels.view(image)[0, 0, 0] == 7 and before[0, 0, 0] == 0
    with voxels.stable_views():
        assert voxels.view(image)[0, 0, 0] == 7
    del kept


def test_a_filter_on_another_thread_does_not_move_the_buffer():
    """The outputs stage's race: a view taken, a filter on the image started on another thread,
    the view asked for again meanwhile, all in one operation. SimpleITK's own view would copy the
    shared buffer and the first view would read freed memory once the filter ends."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 9, size=(160, 160, 160), dtype=np.uint8)
    image = sitk.GetImageFromArray(truth)
    running = threading.Event()

    def resample() -> None:
        running.set()
        for _ in range(3):
            sitk.Resample(image, image, sitk.Euler3DTransform(), sitk.sitkNearestNeighbor, 0)

    with voxels.stable_views():
        first = voxels.view(image)
        thread = threading.Thread(target=resample)
        thread.start()
        running.wait()
        deadline = time.monotonic() + 5.0
        while image.IsUnique() and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)  # until the filter holds the buffer
        assert not image.IsUnique(), "the filter never held the image (the test proves nothing)"
        again = voxels.view(image)  # while the filter holds the buffer
        thread.join()
        assert again is first and _address(voxels.view(image)) == _address(first)
        np.testing.assert_array_equal(first, truth)


def test_every_view_goes_through_voxels():
    """No module of the library or of the Slicer module asks SimpleITK for a view or an array
    itself (see voxelopt.voxels for why)."""
    pattern = re.compile(r"\bsitk\.(GetArrayViewFromImage|GetArrayFromImage)\(")
    offenders = []
    for folder in (ROOT / "VoxelOptLib" / "src", ROOT / "VoxelOptSlicer"):
        for path in folder.rglob("*.py"):
            if path.name == "voxels.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, "use voxelopt.voxels.view/copy instead: " + ", ".join(offenders)
