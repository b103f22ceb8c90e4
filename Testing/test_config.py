import numpy as np
import pytest

from voxelopt import ConfigError, RegistrationConfig
from voxelopt.config import DEFAULT_PRESET, PRESETS, SCHEMA


def test_presets_build_and_differ():
    paper = RegistrationConfig.preset("paper")
    assert paper.levels == 5 and paper.k == 1 and paper.ss_steps == 7
    assert paper.thetas == (150.0, 50.0, 15.0, 5.0, 1.5, 0.5)
    assert paper.hu_window == (-800.0, 500.0)
    assert paper.features == "mind" and paper.feature_spacing == 2.0 and paper.working_scale == 0.5
    fast = RegistrationConfig.preset("fast")
    assert fast != paper
    assert set(PRESETS) >= {"abdomen", "paper", "fast", "accurate"}
    assert paper.init == "none" and paper.refine_iterations == 0
    default = RegistrationConfig.preset(DEFAULT_PRESET)
    assert default == RegistrationConfig() and default.init == "affine" and default.levels == 4
    assert default.refine_iterations > 0 and fast.init == "com" and fast.refine_iterations == 0
    assert RegistrationConfig.preset("accurate") == default.replace(k=2, features="mind+obelisk")


def test_overrides_and_replace_validate():
    config = RegistrationConfig.preset("paper", k=2, thetas=[10, 1])
    assert config.k == 2 and config.thetas == (10.0, 1.0)
    assert config.replace(alpha=2.0).alpha == 2.0
    with pytest.raises(ConfigError, match="alpha"):
        config.replace(alpha=-1.0)


def test_round_trip_through_dict():
    config = RegistrationConfig.preset("fast", init="com")
    assert RegistrationConfig.from_dict(config.to_dict()) == config


def test_schema_describes_every_field_once():
    fields = RegistrationConfig.__dataclass_fields__
    assert list(SCHEMA) == list(fields)
    for name, spec in SCHEMA.items():
        assert spec.name == name and spec.default == fields[name].default
        assert spec.help and spec.group in ("features", "solver", "device")
        assert spec.type in (bool, int, float, str)
        assert (spec.shape == "scalar") == (not isinstance(spec.default, tuple))
        for preset, value in spec.presets.items():
            assert getattr(RegistrationConfig.preset(preset), name) == value
    # the preset table is the schema's per-preset values, nothing else
    assert PRESETS["accurate"] == {"features": "mind+obelisk", "k": 2}
    assert PRESETS[DEFAULT_PRESET] == {}  # the schema's defaults are the default preset


def test_when_parameters_apply():
    paper = RegistrationConfig.preset("paper")
    assert paper.applies("alpha") and not paper.applies("sigma_range") and not paper.applies("fixed_sigma")
    code = paper.replace(sigma_mode="code")
    assert code.applies("sigma_range") and not code.applies("alpha")
    fixed = paper.replace(adaptive=False)
    assert fixed.applies("fixed_sigma") and not fixed.applies("alpha") and not fixed.applies("sigma_mode")
    assert paper.applies("mind_radius") and not paper.replace(features="raw").applies("mind_radius")
    assert not paper.applies("weights") and paper.replace(features="mind+obelisk").applies("weights")
    assert not paper.applies("refine_weight") and paper.replace(refine_iterations=5).applies("refine_weight")
    assert all(paper.applies(name) for name in ("features", "levels", "k", "beta", "thetas", "device"))


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"beta": -2.0}, "beta"),
        ({"beta": 0.0}, "beta"),
        ({"thetas": []}, "thetas"),
        ({"thetas": [1.0, -1.0]}, "theta"),
        ({"k": 0}, "k"),
        ({"k": 4}, "k"),
        ({"levels": 0}, "levels"),
        ({"levels": 8}, "levels"),
        ({"device": "tpu"}, "device"),
        ({"init": "moments"}, "init"),
        ({"sigma_mode": "other"}, "sigma_mode"),
        ({"sigma_range": (0.5, 0.1)}, "sigma_range"),
        ({"hu_window": (500, -800)}, "hu_window"),
        ({"working_scale": 0.0}, "working_scale"),
        ({"feature_spacing": -2.0}, "feature_spacing"),
        ({"ss_steps": -1}, "ss_steps"),
        ({"levels": 2.5}, "levels"),
        ({"smoothing_passes": 0}, "smoothing_passes"),
        ({"smoothing_passes": 10 ** 6}, "smoothing_passes must be from 1 to 20"),
        ({"mind_radius": 6}, "mind_radius must be from 0 to 5 voxels"),
        ({"refine_weight": 0.0}, "refine_weight must be in \\(0, 1e\\+06\\]"),
        ({"beta": 1e39}, "beta must be in \\(0, 1e\\+06\\]"),  # beyond float32: a NaN field
        ({"thetas": (50.0, 1e-45)}, "every value of thetas must be from 1e-06 to 1e\\+06"),
        ({"fixed_sigma": 1e39}, "fixed_sigma must be in \\(0, 100\\] voxels"),
        ({"alpha": 1e3}, "alpha must be in \\(0, 100\\] voxels"),
        ({"fixed_sigma": float("nan")}, "fixed_sigma must be a number"),
        ({"adaptive": 1}, "adaptive must be True or False"),
        ({"features": " "}, "features must be a non-empty name"),
        ({"device": "cuda:x"}, "device must be one of 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"hu_window": (1.0,)}, "hu_window must be two numbers"),
        ({"thetas": "150"}, "thetas must be a sequence"),
        ({"weights": 3}, "weights must be a non-empty name"),
        ({"features": "bogus"}, "unknown feature type bogus; available: mind, obelisk, pdd, raw, torchscript, universal"),
        ({"features": "MIND"}, "unknown feature type MIND"),
        ({"features": "mind+"}, "features 'mind\\+' has an empty part"),
        ({"features": "mind+obelisk+mind"}, "names mind more than once"),
        ({"levels": np.float64(3.0)}, "levels must be an integer"),
        ({"alpha": np.bool_(True)}, "alpha must be a number"),
    ],
)
def test_invalid_values_are_named(changes, word):
    with pytest.raises(ConfigError, match=word):
        RegistrationConfig(**changes)


def test_valid_edge_values_and_normalisation():
    config = RegistrationConfig(device="cuda:1", feature_spacing=None, sigma_range=[0.3, 0.3], thetas=[1, 2], mind_radius=0)
    assert config.device == "cuda:1" and config.feature_spacing is None
    assert config.sigma_range == (0.3, 0.3) and config.thetas == (1.0, 2.0)
    assert hash(config) == hash(RegistrationConfig(device="cuda:1", feature_spacing=None, sigma_range=(0.3, 0.3),
                                                   thetas=(1.0, 2.0), mind_radius=0))


def test_numpy_scalars_are_taken_as_the_numbers_they_are():
    config = RegistrationConfig(levels=np.int64(3), alpha=np.float32(2.0), k=np.int32(2), thetas=np.array([5.0, 0.5]))
    assert config == RegistrationConfig(levels=3, alpha=2.0, k=2, thetas=(5.0, 0.5))
    assert (type(config.levels), type(config.alpha), type(config.k)) == (int, float, int)  # plain numbers, for JSON


def test_feature_types_are_known_without_torch_and_match_the_extractors():
    import subprocess
    import sys

    code = ("import sys, voxelopt\nvoxelopt.RegistrationConfig(features='mind+obelisk')\n"
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    import voxelopt.features
    from voxelopt.config import BUILTIN_FEATURES, feature_types

    assert sorted(BUILTIN_FEATURES) == voxelopt.features.available_extractors()
    voxelopt.features.register_extractor("mine", lambda config: voxelopt.features.RawIntensity(config.hu_window))
    try:
        assert "mine" in feature_types() and RegistrationConfig(features="mind+mine").features == "mind+mine"
    finally:
        voxelopt.features.base._REGISTRY.pop("mine")


def test_unknown_preset_and_parameter():
    with pytest.raises(ConfigError, match="unknown preset 'best'"):
        RegistrationConfig.preset("best")
    with pytest.raises(ConfigError, match="unknown parameter.*lamda"):
        RegistrationConfig.from_dict({"lamda": 1})


def test_help_of_the_config_lists_every_parameter_with_its_schema_text():
    doc = RegistrationConfig.__doc__
    for spec in SCHEMA.values():
        assert f"{spec.name}: {spec.description()} (default {spec.default!r}" in doc
    assert "refine_iterations:" in doc and "paper 0" in doc  # a preset's own value
