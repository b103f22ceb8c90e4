import pytest

from voxelopt import ConfigError, RegistrationConfig
from voxelopt.config import FEATURE_PARAMETERS, PRESETS


def test_presets_build_and_differ():
    paper = RegistrationConfig.preset("paper")
    assert paper.levels == 5 and paper.k == 1 and paper.ss_steps == 7
    assert paper.thetas == (150.0, 50.0, 15.0, 5.0, 1.5, 0.5)
    assert paper.hu_window == (-800.0, 500.0)
    assert paper.features == "mind" and paper.feature_spacing == 2.0 and paper.working_scale == 0.5
    fast = RegistrationConfig.preset("fast")
    assert fast != paper
    assert set(PRESETS) >= {"paper", "fast", "accurate"}
    assert RegistrationConfig.preset("accurate").k == 2


def test_overrides_and_replace_validate():
    config = RegistrationConfig.preset("paper", k=2, thetas=[10, 1])
    assert config.k == 2 and config.thetas == (10.0, 1.0)
    assert config.replace(alpha=2.0).alpha == 2.0
    with pytest.raises(ConfigError, match="alpha"):
        config.replace(alpha=-1.0)


def test_round_trip_through_dict():
    config = RegistrationConfig.preset("fast", init="com")
    assert RegistrationConfig.from_dict(config.to_dict()) == config


def test_feature_key_changes_only_with_feature_parameters():
    base = RegistrationConfig()
    assert base.replace(alpha=3.0, levels=3, thetas=[1.0]).feature_key() == base.feature_key()
    assert base.replace(features="raw").feature_key() != base.feature_key()
    assert base.replace(init="com").feature_key() != base.feature_key()
    assert "working_scale" in FEATURE_PARAMETERS


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
    ],
)
def test_invalid_values_are_named(changes, word):
    with pytest.raises(ConfigError, match=word):
        RegistrationConfig(**changes)


def test_unknown_preset_and_parameter():
    with pytest.raises(ConfigError, match="unknown preset 'best'"):
        RegistrationConfig.preset("best")
    with pytest.raises(ConfigError, match="unknown parameter.*lamda"):
        RegistrationConfig.from_dict({"lamda": 1})
