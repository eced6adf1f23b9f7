"""``select_step_size``: choose a stochastic-gradient baseline's step size on held-out data.

SGLD, SGHMC and AdaSGHMC have no tuner: their step size trades bias against mixing, and the
right value depends on the data size, the curvature and the gradient noise. The standard
remedy, and the baselines' protocol in the SMILE papers' comparisons, is a grid: run the
ensemble at every step size from the same pretrained members and keep the best validation
log pointwise predictive density (LPPD). This module does that and reports what every grid
point cost (wall time, compilation apart, and full-data-equivalent gradient evaluations), so
the price of tuning is on the record next to SMILE's, which needs no grid.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from numpyro_smile import evaluation
from numpyro_smile.diagnostics import ResetWarning
from numpyro_smile.ensemble import SMILEEnsemble
from numpyro_smile.kernel import KernelAdapter

if TYPE_CHECKING:
    import arviz as az

__all__ = ["GridPoint", "StepSizeSelection", "select_step_size"]


class GridPoint(NamedTuple):
    """One step size of the grid.

    Attributes:
        step_size: the value tried.
        valid_lppd: mean validation log predictive density per held-out point (``-inf`` when
            the draws were not finite).
        wall_s: seconds of the run (pretraining and compilation excluded) plus its evaluation.
        compile_s: seconds spent compiling the run.
        grad_evals: full-data-equivalent gradient evaluations of warmup and sampling, all
            members (a mini-batch gradient counts B / N).
    """

    step_size: float
    valid_lppd: float
    wall_s: float
    compile_s: float
    grad_evals: float


class StepSizeSelection(NamedTuple):
    """The outcome of :func:`select_step_size`.

    Attributes:
        step_size: the step size with the best validation LPPD.
        idata: that run's InferenceData.
        grid: every :class:`GridPoint`, in the order tried.
        ensemble: the ensemble of the chosen run (``pretrained_params``, ``timings``, ...).
    """

    step_size: float
    idata: az.InferenceData
    grid: list[GridPoint]
    ensemble: SMILEEnsemble

    @property
    def grid_wall_s(self) -> float:
        """Seconds the grid cost beyond the chosen run."""
        chosen = next(p for p in self.grid if p.step_size == self.step_size)
        return sum(p.wall_s for p in self.grid) - chosen.wall_s

    @property
    def grid_grad_evals(self) -> float:
        """Gradient evaluations the grid cost beyond the chosen run."""
        chosen = next(p for p in self.grid if p.step_size == self.step_size)
        return sum(p.grad_evals for p in self.grid) - chosen.grad_evals


def select_step_size(
    make_kernel: Callable[[float], KernelAdapter],
    step_sizes: Sequence[float],
    model: Callable,
    *model_args: Any,
    rng_key: jax.Array,
    validation: tuple,
    init_params: dict | None = None,
    **ensemble_settings: Any,
) -> StepSizeSelection:
    """Run the ensemble at every step size and keep the best validation LPPD.

    Args:
        make_kernel: ``step_size -> kernel``, e.g. ``lambda s: SGHMC(model, step_size=s)``
            (a schedule's peak works the same way: ``lambda s: SGLD(model,
            step_size=cyclical(s, 1000, 4))``).
        step_sizes: the grid.
        model: the NumPyro model; ``model_args`` its training data.
        rng_key: the key of every run (the same draws of noise and batches at every point).
        validation: the model's positional arguments on held-out data, e.g. ``(X_val, y_val)``.
        init_params: the members' starting points (unconstrained, member axis first), e.g. a
            deep ensemble's ``pretrained_params``; ``None``: the first run pretrains them
            (as :class:`~numpyro_smile.SMILEEnsemble` does) and every other run starts from
            them.
        **ensemble_settings: :class:`~numpyro_smile.SMILEEnsemble`'s settings
            (``num_members``, ``num_warmup``, ``num_samples``, ``thinning``, ...).

    Returns:
        A :class:`StepSizeSelection`; a grid point whose draws are not finite scores
        ``-inf``.

    Raises:
        ValueError: an empty grid.
    """
    if len(step_sizes) == 0:
        raise ValueError("step_sizes is empty: give the grid of step sizes to try.")
    settings = {"log_likelihood": False, "progress_bar": False, **ensemble_settings}
    points, runs = [], []
    for step_size in step_sizes:
        kernel = make_kernel(step_size)
        run_settings = settings if init_params is None else {**settings, "pretrain_epochs": 0}
        ensemble = SMILEEnsemble(model, kernel=kernel, **run_settings)
        with warnings.catch_warnings():  # a step size too large is what the grid finds out
            warnings.simplefilter("ignore", ResetWarning)
            idata = ensemble.run(rng_key, *model_args, init_params=init_params)
        if init_params is None:
            init_params = ensemble.pretrained_params
        start = time.perf_counter()
        score = _validation_lppd(model, idata, validation)
        timings = ensemble.timings
        wall = (
            timings["total_s"]
            - timings.get("compile_s", 0.0)
            - timings.get("pretrain_s", 0.0)
            + time.perf_counter()
            - start
        )
        points.append(
            GridPoint(
                float(step_size),
                score,
                wall,
                timings.get("compile_s", 0.0),
                _grad_evals(ensemble, kernel),
            )
        )
        runs.append((idata, ensemble))
    best = max(range(len(points)), key=lambda j: points[j].valid_lppd)
    return StepSizeSelection(points[best].step_size, runs[best][0], points, runs[best][1])


def _validation_lppd(model: Callable, idata: Any, validation: tuple) -> float:
    posterior = idata.posterior
    if not all(np.all(np.isfinite(posterior[name].values)) for name in posterior.data_vars):
        return -math.inf
    lppd = evaluation.evaluate(model, idata, *validation)["lppd"]
    return float(lppd) if np.isfinite(lppd) else -math.inf


def _grad_evals(ensemble: SMILEEnsemble, kernel: KernelAdapter) -> float:
    """Full-data-equivalent gradient evaluations of warmup and sampling, all members."""
    steps = ensemble.num_members * (ensemble.num_warmup + ensemble.num_samples)
    per_step = getattr(kernel.config, "num_integration_steps", 1)
    plates = ensemble.subsample_plates
    share = math.prod(p.subsample_size / p.size for p in plates.values()) if plates else 1.0
    if ensemble.full_batch:
        share = 1.0
    return float(steps * per_step * share)
