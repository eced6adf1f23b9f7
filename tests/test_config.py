"""``SMILEConfig``: defaults, validation at construction and on ``replace``, serialisation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from numpyro_smile import tuning
from numpyro_smile.config import SMILEConfig, energy_var_schedule

DEFAULTS = {
    "step_size": None,
    "L": None,
    "precondition": None,
    "adapt": True,
    "adapt_during_sampling": False,
    "reset_quantile": 0.98,
    "adapt_tail_prob": 0.1,
    "adapt_rate": 0.02,
    "smoothing": 0.01,
    "shrink_share": 0.5,
    "max_noise_angle": 0.2,
    "desired_energy_var": None,
    "integrator": "mclachlan",
    "pretrain_steps": 1000,
    "pretrain_learning_rate": 0.02,
    "batch_schedule": "epoch",
}


def test_defaults_are_the_documented_ones():
    config = SMILEConfig()
    assert {f.name for f in dataclasses.fields(config)} == set(DEFAULTS)
    for name, value in DEFAULTS.items():
        assert getattr(config, name) == value, name


def test_energy_tuner_carries_the_tuner_settings():
    config = SMILEConfig(
        reset_quantile=0.9, adapt_tail_prob=0.2, adapt_rate=0.05, smoothing=0.1, shrink_share=0.6
    )
    tuner = config.energy_tuner
    assert isinstance(tuner, tuning.EnergyTunerConfig)
    assert (tuner.reset_quantile, tuner.adapt_tail_prob, tuner.adapt_rate) == (0.9, 0.2, 0.05)
    assert (tuner.smoothing, tuner.shrink_share) == (0.1, 0.6)
    assert tuner.burn_in == tuning.EnergyTunerConfig().burn_in


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("precondition", "yes"),
        ("precondition", 1),
        ("adapt", "no"),
        ("adapt", 0),
        ("adapt_during_sampling", "no"),
        ("step_size", "1e-3"),
        ("step_size", True),
        ("L", [1.0]),
        ("L", np.bool_(True)),
        ("reset_quantile", "0.9"),
        ("adapt_tail_prob", "0.1"),
        ("adapt_rate", "fast"),
        ("smoothing", (0.1,)),
        ("shrink_share", False),
        ("max_noise_angle", "0.2"),
        ("pretrain_learning_rate", "0.02"),
        ("pretrain_steps", 10.0),
        ("pretrain_steps", True),
        ("pretrain_steps", "10"),
        # None means "the default" only for precondition, step_size and L
        ("adapt", None),
        ("adapt_during_sampling", None),
        ("reset_quantile", None),
        ("adapt_tail_prob", None),
        ("adapt_rate", None),
        ("smoothing", None),
        ("shrink_share", None),
        ("max_noise_angle", None),
        ("pretrain_learning_rate", None),
    ],
)
def test_wrong_type_is_a_type_error_naming_the_option(option, value):
    with pytest.raises(TypeError, match=f"^{option} must be"):
        SMILEConfig(**{option: value})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("step_size", 0.0),
        ("step_size", -1e-3),
        ("step_size", math.inf),
        ("step_size", math.nan),
        ("L", 0.0),
        ("L", -2.0),
        ("L", math.nan),
        ("integrator", "euler"),
        ("batch_schedule", "random"),
        ("reset_quantile", 0.0),
        ("reset_quantile", 1.5),
        ("adapt_tail_prob", -0.1),
        ("adapt_tail_prob", 0.75),
        ("shrink_share", 0.0),
        ("shrink_share", 1.0),
        ("pretrain_steps", -1),
        ("pretrain_learning_rate", 0.0),
        ("max_noise_angle", 0.0),
        ("max_noise_angle", -0.1),
        ("adapt_rate", 1.0),
        ("adapt_rate", -0.01),
        ("smoothing", 0.0),
        ("smoothing", 1.5),
        ("desired_energy_var", 0.0),
        ("desired_energy_var", -1.0),
        ("desired_energy_var", math.inf),
        ("desired_energy_var", (0.5,)),
        ("desired_energy_var", (0.5, 0.1, 0.05)),
        ("desired_energy_var", (0.5, -0.1)),
        ("desired_energy_var", (0.5, math.nan)),
        ("desired_energy_var", "0.5"),
        ("desired_energy_var", True),
        ("desired_energy_var", (True, 0.1)),
    ],
)
def test_bad_value_is_a_value_error_naming_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        SMILEConfig(**{option: value})


def test_no_adaptation_needs_a_step_size():
    with pytest.raises(ValueError, match="adapt=False needs an explicit step_size"):
        SMILEConfig(adapt=False)
    assert SMILEConfig(adapt=False, step_size=0.1).step_size == 0.1


@pytest.mark.parametrize(
    "changes",
    [
        {"reset_quantile": 1.0},  # disables resets
        {"adapt_tail_prob": 0.0},  # disables adaptation
        {"adapt_rate": 0.0},
        {"smoothing": 1.0},
        {"pretrain_steps": 0},
        {"L": math.inf},  # no partial refresh
        {"precondition": np.bool_(False)},
        {"step_size": np.float32(1e-3), "pretrain_steps": np.int64(5)},
        {"integrator": "leapfrog", "batch_schedule": "with_replacement"},
    ],
)
def test_boundary_and_numpy_values_are_accepted(changes):
    config = SMILEConfig(**changes)
    for name, value in changes.items():
        assert getattr(config, name) == value


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (5e-4, (5e-4, 5e-4)),
        (1, (1.0, 1.0)),
        ((0.5, 0.1), (0.5, 0.1)),
        ([0.5, 0.1], (0.5, 0.1)),
        ((3, 1), (3.0, 1.0)),
        (np.float64(0.2), (0.2, 0.2)),
        (np.float32(0.25), (0.25, 0.25)),
        (np.array([0.5, 0.25]), (0.5, 0.25)),
        ((np.float32(0.5), np.int64(1)), (0.5, 1.0)),
    ],
)
def test_desired_energy_var_is_stored_as_a_pair_of_floats(given, stored):
    value = SMILEConfig(desired_energy_var=given).desired_energy_var
    assert isinstance(value, tuple)
    assert value == stored
    assert all(type(v) is float for v in value)
    assert energy_var_schedule(given) == stored


def test_replace_returns_a_validated_copy():
    config = SMILEConfig(step_size=0.1, adapt=False)
    changed = config.replace(step_size=0.2, desired_energy_var=0.3)
    assert (changed.step_size, changed.adapt, changed.desired_energy_var) == (
        0.2,
        False,
        (0.3, 0.3),
    )
    assert config.step_size == 0.1 and config.desired_energy_var is None  # original untouched
    with pytest.raises(ValueError, match="step_size"):
        config.replace(step_size=-0.2)
    with pytest.raises(TypeError, match="precondition"):
        config.replace(precondition="yes")
    with pytest.raises(ValueError, match="adapt=False"):
        SMILEConfig().replace(adapt=False)
    with pytest.raises(TypeError):
        config.replace(no_such_option=1)


def test_to_dict_is_json_serialisable_and_round_trips():
    config = SMILEConfig(
        step_size=0.05, L=2.0, precondition=True, desired_energy_var=(0.5, 0.1), pretrain_steps=3
    )
    as_dict = config.to_dict()
    assert set(as_dict) == set(DEFAULTS)
    assert as_dict["desired_energy_var"] == [0.5, 0.1]
    text = json.dumps(as_dict)  # raises for anything but plain values
    assert SMILEConfig(**json.loads(text)) == config
    assert json.loads(json.dumps(SMILEConfig().to_dict())) == DEFAULTS


def test_config_is_frozen_and_hashable():
    config = SMILEConfig(desired_energy_var=[0.5, 0.1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.step_size = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.desired_energy_var = None  # type: ignore[misc]
    # Hashable (a list would not be): the config is a static argument of compiled functions.
    assert hash(config) == hash(SMILEConfig(desired_energy_var=(0.5, 0.1)))
    assert config == SMILEConfig(desired_energy_var=(0.5, 0.1))
    assert config != SMILEConfig(desired_energy_var=(0.5, 0.2))
