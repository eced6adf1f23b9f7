"""``SMILEConfig``: the one validated copy of a sampler's settings.

Every setting of the MCLMC family lives here, frozen and checked once at construction, so a
wrong value fails where it is written (``SMILEConfig(precondition="yes")`` is a ``TypeError``
naming the option) and not deep inside a compiled step. The NumPyro kernel
(:class:`~numpyro_smile.SMILE`), the functional core (:func:`numpyro_smile.sampler.build_kernel`)
and the ensemble driver all read this object; none copies its fields.

Which variant runs is decided by the model, not by the config: a subsample plate gives SMILE
(pSMILE with ``precondition=None``), no subsample plate gives full-batch MCLMC with MILE's
tuning, and ``adapt=False`` with a fixed ``step_size`` the naive variants (for ablations).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from numpyro_smile import batching, dynamics, tuning

__all__ = ["SMILEConfig"]

#: The SMILE tuner's defaults are :class:`~numpyro_smile.tuning.EnergyTunerConfig`'s.
_ENERGY_TUNER = tuning.EnergyTunerConfig()


@dataclasses.dataclass(frozen=True)
class SMILEConfig:
    """Settings of the SMILE / MILE sampler (see :class:`~numpyro_smile.SMILE` for each).

    Attributes:
        step_size: initial step size epsilon (path length per step in preconditioned
            coordinates); ``None``: the noise-limited step size, at most 1e-3, on mini-batches
            and 1e-2 in full batch. Adapted unless ``adapt=False``.
        L: momentum decoherence length (path length); ``None``: no partial refresh on
            mini-batches, MILE's tuning in full batch.
        precondition: the gradient-noise preconditioner; ``None``: on mini-batches only.
        adapt: adapt the step size (and L in full batch) during warmup.
        adapt_during_sampling: mini-batch mode: keep adapting after warmup (the paper's).
        reset_quantile, adapt_tail_prob, adapt_rate, smoothing, shrink_share: the SMILE
            energy-error tuner (:class:`~numpyro_smile.tuning.EnergyTunerConfig`).
        max_noise_angle: radians the gradient noise may turn the velocity per step.
        desired_energy_var: full batch: target Var[dE] per dimension, a float or a
            ``(start, end)`` schedule; ``None``: the caller's default (BlackJAX's 5e-4 for
            ``SMILE``, MILE's ``(0.5, 0.1)`` for the ensemble's recipe).
        integrator: ``"mclachlan"`` (2 gradients per step) or ``"leapfrog"`` (1).
        pretrain_steps: Adam steps from the init strategy's point before sampling (``SMILE``
            without ``init_params`` only).
        pretrain_learning_rate: Adam's learning rate for ``pretrain_steps``.
        batch_schedule: ``"epoch"`` (permutation per epoch) or ``"with_replacement"``.
    """

    step_size: float | None = None
    L: float | None = None
    precondition: bool | None = None
    adapt: bool = True
    adapt_during_sampling: bool = False
    reset_quantile: float = _ENERGY_TUNER.reset_quantile
    adapt_tail_prob: float = _ENERGY_TUNER.adapt_tail_prob
    adapt_rate: float = _ENERGY_TUNER.adapt_rate
    smoothing: float = _ENERGY_TUNER.smoothing
    shrink_share: float = _ENERGY_TUNER.shrink_share
    max_noise_angle: float = 0.2
    desired_energy_var: float | tuple[float, float] | None = None
    integrator: str = "mclachlan"
    pretrain_steps: int = 1000
    pretrain_learning_rate: float = 0.02
    batch_schedule: str = "epoch"

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)
        if self.desired_energy_var is not None:  # stored as a validated (start, end) pair
            object.__setattr__(
                self, "desired_energy_var", energy_var_schedule(self.desired_energy_var)
            )

    @property
    def energy_tuner(self) -> tuning.EnergyTunerConfig:
        """The SMILE tuner's settings."""
        return tuning.EnergyTunerConfig(
            self.reset_quantile,
            self.adapt_tail_prob,
            self.adapt_rate,
            self.smoothing,
            shrink_share=self.shrink_share,
        )

    @classmethod
    def with_settings(
        cls, config: SMILEConfig | None, settings: dict[str, Any], owner: str
    ) -> SMILEConfig:
        """``config`` (default: the defaults) with ``settings`` applied; a clear ``TypeError``
        names an unknown setting or a ``config`` of the wrong type (``owner`` is the caller)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(
                f"{owner} got unknown settings {unknown}; the sampler settings are "
                f"{sorted(known)} (see SMILEConfig)."
            )
        if config is None:
            return cls(**settings)
        if not isinstance(config, cls):
            raise TypeError(f"config must be a SMILEConfig, got {type(config).__name__}.")
        return config.replace(**settings) if settings else config

    def replace(self, **changes: Any) -> SMILEConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain Python values (for checkpoints and comparisons)."""
        return {
            field.name: (list(value) if isinstance(value, tuple) else value)
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }


def energy_var_schedule(desired_energy_var: Any) -> tuple[float, float]:
    """``desired_energy_var`` as a validated ``(start, end)`` pair of positive floats (from a
    number, a pair, or a NumPy scalar or 2-vector)."""
    value = desired_energy_var
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if _is_number(value):
        value = (value, value)
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    if not (
        len(pair) == 2
        and all(_is_number(v) for v in pair)
        and all(math.isfinite(v) and v > 0 for v in pair)
    ):
        raise ValueError(
            "desired_energy_var must be a positive number or a (start, end) pair of them "
            f"(e.g. 5e-4, or MILE's (0.5, 0.1)), got {desired_energy_var!r}."
        )
    return float(pair[0]), float(pair[1])


def _is_number(value: Any) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def _check_types(config: SMILEConfig) -> None:
    """Type errors for options of the wrong kind (``precondition="yes"``, ``step_size="1e-3"``,
    ``adapt=None``), which would otherwise be accepted and misread. ``None`` means "the
    default" only for ``precondition``, ``step_size`` and ``L``."""
    for name in ("adapt", "adapt_during_sampling", "precondition"):
        value = getattr(config, name)
        if (value is not None or name != "precondition") and not isinstance(
            value, (bool, np.bool_)
        ):
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    for name in (
        "step_size",
        "L",
        "reset_quantile",
        "adapt_tail_prob",
        "adapt_rate",
        "smoothing",
        "shrink_share",
        "max_noise_angle",
        "pretrain_learning_rate",
    ):
        value = getattr(config, name)
        if (value is not None or name not in ("step_size", "L")) and not _is_number(value):
            raise TypeError(f"{name} must be a number, got {value!r}.")
    value = config.pretrain_steps
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"pretrain_steps must be an int, got {value!r}.")


def _check_values(c: SMILEConfig) -> None:
    if c.step_size is not None and not (math.isfinite(c.step_size) and c.step_size > 0):
        raise ValueError(f"step_size must be a positive finite number, got {c.step_size!r}.")
    if c.L is not None and not c.L > 0:
        raise ValueError(f"L must be positive (or None to tune it), got {c.L!r}.")
    if not c.adapt and c.step_size is None:
        raise ValueError("adapt=False needs an explicit step_size (nothing would tune it).")
    if c.integrator not in dynamics.INTEGRATORS:
        raise ValueError(
            f"integrator must be one of {sorted(dynamics.INTEGRATORS)}, got {c.integrator!r}."
        )
    if c.batch_schedule not in batching.BATCH_SCHEDULES:
        raise ValueError(
            f"batch_schedule must be one of {batching.BATCH_SCHEDULES}, got {c.batch_schedule!r}."
        )
    if not 0 < c.reset_quantile <= 1:
        raise ValueError(f"reset_quantile must be in (0, 1], got {c.reset_quantile!r}.")
    if not 0 <= c.adapt_tail_prob < 0.75:
        raise ValueError(f"adapt_tail_prob must be in [0, 0.75), got {c.adapt_tail_prob!r}.")
    if not 0 < c.shrink_share < 1:
        raise ValueError(f"shrink_share must be in (0, 1), got {c.shrink_share!r}.")
    if c.pretrain_steps < 0 or not c.pretrain_learning_rate > 0:
        raise ValueError("pretrain_steps must be >= 0 and pretrain_learning_rate > 0.")
    if not c.max_noise_angle > 0:
        raise ValueError(f"max_noise_angle must be positive, got {c.max_noise_angle!r}.")
    if not (0 <= c.adapt_rate < 1 and 0 < c.smoothing <= 1):
        raise ValueError("adapt_rate must be in [0, 1) and smoothing in (0, 1].")
