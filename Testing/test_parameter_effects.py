"""Every configuration field reaches the registration: changing it (where it applies) changes the result.

One small phantom pair (32 x 28 x 24 voxels of 10 mm, warped by up to 20 mm, the fixed one a thin scan padded with air slabs; features and solver
on a 10 mm grid, two levels; about 0.4 s a registration) is registered with a base configuration and with each field changed; the displacement
field or the entropy map must differ. A field that a solver module ignored (e.g. a constant in
place of ``config.alpha``) keeps the result identical and fails its case.
"""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from voxelopt import RegistrationConfig, register
from voxelopt.config import SCHEMA
from voxelopt.phantom import phantom_pair

BASE = RegistrationConfig.preset("paper", feature_spacing=10.0, working_scale=1.0, levels=2, device="cpu")

#: field -> (settings under which it applies, the changed value). The comparison is between
#: ``BASE.replace(**settings)`` and the same with the field changed.
CHANGES = {
    "features": ({}, "raw"),
    "hu_window": ({}, (-200.0, 300.0)),
    "mind_radius": ({}, 1),
    "mind_dilation": ({}, 1),
    "feature_spacing": ({}, 12.0),
    "working_scale": ({}, 0.5),
    "levels": ({}, 1),
    "k": ({}, 2),
    "k_finest": ({"k": 2}, 1),
    "beta": ({}, 2.0),
    "sigma_mode": ({}, "code"),
    "alpha": ({}, 4.0),
    "sigma_range": ({"sigma_mode": "code"}, (0.4, 1.5)),
    "adaptive": ({}, False),
    "fixed_sigma": ({"adaptive": False}, 1.5),
    "filter_cost": ({}, False),
    "smoothing_passes": ({}, 1),
    "thetas": ({}, (50.0, 5.0)),
    "ss_steps": ({}, 0),
    "refine_iterations": ({}, 5),
    "refine_weight": ({"refine_iterations": 5}, 20.0),
    "refine_scale": ({"refine_iterations": 5}, 0.25),
    "padding_mask": ({}, False),
    "search_fraction": ({}, 0.05),
    "init": ({}, "com"),
}

#: Fields that cannot be exercised here, and why.
NOT_EXERCISED = {
    "weights": "needs a network feature extractor and its weights file (../shared/models); network "
               "features are covered by Testing/test_networks*.py",
    "device": "'cuda' needs a GPU; on a CPU-only machine 'auto' and 'cpu' are the same device",
}


def test_every_field_is_covered():
    assert set(CHANGES) | set(NOT_EXERCISED) == set(SCHEMA)
    assert not set(CHANGES) & set(NOT_EXERCISED)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these registrations are tiny, and extra threads only wait on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    """The phantom pair, the fixed image a thin scan: its first and last 5 slices are padding (its
    minimum value), so the field-of-view parameters (padding_mask, search_fraction) apply."""
    pair = phantom_pair(size=(32, 28, 24), spacing=(10.0, 10.0, 10.0), max_displacement_mm=20.0, seed=3)
    array = sitk.GetArrayFromImage(pair.fixed)
    array[:5] = array[-5:] = array.min()
    thin = sitk.GetImageFromArray(array)
    thin.CopyInformation(pair.fixed)
    return dataclasses.replace(pair, fixed=thin)


def _outputs(pair, config):
    result = register(pair.fixed, pair.moving, config)
    entropy = result.output_image("entropy", full_size=True)  # entropy on the fixed grid, whatever the working grid
    return sitk.GetArrayFromImage(result.field_image("fixed")), sitk.GetArrayFromImage(entropy)


@pytest.fixture(scope="module")
def reference_outputs(pair):
    """Outputs of the base configuration under each distinct setting of CHANGES (computed once each)."""
    cache = {}

    def outputs(settings):
        key = tuple(sorted(settings.items()))
        if key not in cache:
            cache[key] = _outputs(pair, BASE.replace(**settings))
        return cache[key]

    return outputs


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_changing_a_field_changes_the_result(name, pair, reference_outputs):
    settings, value = CHANGES[name]
    before = BASE.replace(**settings)
    after = before.replace(**{name: value})
    assert getattr(after, name) != getattr(before, name)
    assert after.applies(name), f"{name} does not apply under {settings}: choose other settings"
    field_before, entropy_before = reference_outputs(settings)
    field_after, entropy_after = _outputs(pair, after)
    same_shape = field_after.shape == field_before.shape and entropy_after.shape == entropy_before.shape
    assert same_shape  # outputs are on the fixed grid whatever the parameters
    field_change = float(np.abs(field_after - field_before).max())
    entropy_change = float(np.abs(entropy_after - entropy_before).max())
    assert max(field_change, entropy_change) > 1e-3, f"{name}={value!r} left the result unchanged"


def test_a_field_that_does_not_apply_changes_nothing(pair, reference_outputs):
    """The other side of ``applies``: sigma_range is unused with the paper's sigma form."""
    assert not BASE.applies("sigma_range")
    field, entropy = _outputs(pair, BASE.replace(sigma_range=(0.4, 1.5)))
    field_base, entropy_base = reference_outputs({})
    np.testing.assert_array_equal(field, field_base)
    np.testing.assert_array_equal(entropy, entropy_base)
