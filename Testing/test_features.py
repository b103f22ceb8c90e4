"""MIND-SSC: the cache-blocked box filter and the descriptor's defining properties."""

import pytest
import torch
import torch.nn.functional as F

from voxelopt.features import mind
from voxelopt.features.mind import _box_sum_3d, _box_sum_axis, mind_ssc


def _brute_force_box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(2r+1)^3 sums of (C, Z, Y, X) with replicated borders, in float64 from the definition."""
    padded = F.pad(x.double()[None], [radius] * 6, mode="replicate")[0]
    return F.avg_pool3d(padded, 2 * radius + 1, stride=1) * (2 * radius + 1) ** 3


@pytest.mark.parametrize("shape, radius", [((3, 11, 9, 7), 2), ((2, 5, 1, 6), 2), ((1, 4, 7, 3), 1), ((2, 2, 3, 2), 3)])
def test_blocked_box_sum_is_the_box_sum_and_bit_identical_to_whole_volume_passes(monkeypatch, shape, radius):
    monkeypatch.setattr(mind, "BOX_BLOCK", 3)  # several blocks (and a short last one) on small volumes
    x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
    blocked = _box_sum_3d(x.clone(), radius, torch.empty_like(x))
    torch.testing.assert_close(blocked.double(), _brute_force_box_sum(x, radius), rtol=1e-5, atol=1e-5)
    a, b = x.clone(), torch.empty_like(x)
    for dim in (1, 2, 3):  # the unblocked passes over the whole volume
        _box_sum_axis(a, radius, dim, b)
        a, b = b, a
    assert torch.equal(blocked, a)


def test_mind_is_invariant_to_contrast_and_brightness_and_lies_in_0_1():
    generator = torch.Generator().manual_seed(0)
    image = F.avg_pool3d(torch.rand((1, 1, 20, 18, 22), generator=generator), 3, stride=1, padding=1)
    features = mind_ssc(image)
    assert features.shape == (1, 12, 20, 18, 22)
    assert float(features.min()) >= 0.0 and float(features.max()) <= 1.0
    assert torch.allclose(mind_ssc(3.0 * image + 100.0), features, atol=1e-4)
    assert not torch.allclose(mind_ssc(image.flip(2)), features, atol=1e-2)  # it does describe the structure


def test_combined_features_are_the_scaled_parts_side_by_side_and_resize_part_by_part():
    """``raw+mind``: each part divided by its mean absolute value, in the order named; the
    working-grid features (each part resized before they are put together) equal the full-size
    combination resized."""
    import numpy as np

    from testdata import make_image
    from voxelopt import RegistrationConfig
    from voxelopt.features import make_extractor
    from voxelopt.geometry import resize_volume

    rng = np.random.default_rng(5)
    image = make_image(rng.normal(-200.0, 300.0, (16, 14, 12)).astype(np.float32), spacing=(2.0, 2.0, 2.0))
    combined = make_extractor(RegistrationConfig(features="raw+mind"))
    parts = [make_extractor(RegistrationConfig(features=name)).extract(image, torch.device("cpu")) for name in ("raw", "mind")]
    expected = torch.cat([f / f.abs().mean() for f in parts])
    full = combined.extract(image, torch.device("cpu"))
    assert full.shape == expected.shape and torch.allclose(full, expected, rtol=1e-5, atol=1e-6)
    resized = combined.extract_resized(image, torch.device("cpu"), (8, 7, 6))
    assert resized.shape == (1, expected.shape[0], 8, 7, 6) and resized.is_contiguous()
    assert torch.allclose(resized, resize_volume(expected[None], (8, 7, 6)), rtol=1e-5, atol=1e-6)


def test_mean_abs_is_exact_for_large_maps():
    """The combination's scale, exact on 25 M values (a float32 accumulation, as
    ``torch.linalg.vector_norm(ord=1)``'s on the CPU, gives 0.978 here)."""
    from voxelopt.features.base import mean_abs

    values = torch.full((1, 3, 256, 256, 128), 0.9)
    values[0, 1] = -0.9
    assert abs(mean_abs(values) - 0.9) < 1e-6
    assert mean_abs(torch.full((1, 2, 3, 4, 5), 0.25)) == 0.25
