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

__all__ = ["MAX_MEMBER_GAP", "GridPoint", "GridWarning", "StepSizeSelection", "select_step_size"]


#: A grid point is refused when one of its members' validation LPPD trails the ensemble's by
#: more than this many nats per held-out point (its predictive density is below e^-5, 0.7 %,
#: of the ensemble's): the member has left the data (a run-away chain, finite but far off),
#: which the pooled LPPD hides at a cost of at most log K.
MAX_MEMBER_GAP = 5.0
#: The grid is extended past an edge only when the edge beats its neighbour by more than this
#: many nats per held-out point: on a flat stretch (e.g. step sizes so small that the chains
#: stay at their starts) a further point could only chase noise.
EDGE_GAIN = 0.01


class GridPoint(NamedTuple):
    """One step size of the grid.

    Attributes:
        step_size: the value tried.
        valid_lppd: mean validation log predictive density per held-out point, all members'
            draws pooled (``-inf`` when the draws were not finite).
        wall_s: seconds of the run (pretraining and compilation excluded) plus its evaluation.
        compile_s: seconds spent compiling the run.
        grad_evals: full-data-equivalent gradient evaluations of warmup and sampling, all
            members (a mini-batch gradient counts B / N).
        member_lppd: each member's own validation LPPD (``()`` when the draws were not
            finite).
        accepted: ``False`` when the draws were not finite or a member trailed the ensemble by
            more than ``max_member_gap`` (it ran away); such a point is never chosen while an
            accepted one exists.
    """

    step_size: float
    valid_lppd: float
    wall_s: float
    compile_s: float
    grad_evals: float
    member_lppd: tuple[float, ...] = ()
    accepted: bool = True


class StepSizeSelection(NamedTuple):
    """The outcome of :func:`select_step_size`.

    Attributes:
        step_size: the chosen step size: the best validation LPPD among accepted points.
        idata: that run's InferenceData.
        grid: every :class:`GridPoint`, in the order tried (the given grid, then any
            extensions beyond its edges).
        ensemble: the ensemble of the chosen run (``pretrained_params``, ``timings``, ...).
    """

    step_size: float
    idata: az.InferenceData
    grid: list[GridPoint]
    ensemble: SMILEEnsemble

    @property
    def grid_wall_s(self) -> float:
        """Seconds the grid cost beyond the chosen run (compilation excluded)."""
        chosen = next(p for p in self.grid if p.step_size == self.step_size)
        return sum(p.wall_s for p in self.grid) - chosen.wall_s

    @property
    def grid_grad_evals(self) -> float:
        """Gradient evaluations the grid cost beyond the chosen run."""
        chosen = next(p for p in self.grid if p.step_size == self.step_size)
        return sum(p.grad_evals for p in self.grid) - chosen.grad_evals


class GridWarning(UserWarning):
    """No grid point was accepted: every step size tried let a member run away."""


def select_step_size(
    make_kernel: Callable[[float], KernelAdapter],
    step_sizes: Sequence[float],
    model: Callable,
    *model_args: Any,
    rng_key: jax.Array,
    validation: tuple,
    init_params: dict | None = None,
    max_extensions: int = 2,
    max_member_gap: float = MAX_MEMBER_GAP,
    **ensemble_settings: Any,
) -> StepSizeSelection:
    """Run the ensemble at every step size and keep the best validation LPPD.

    The score is the validation LPPD of all members' draws pooled, the quantity the benchmarks
    report. Two safeguards make the choice trustworthy without looking at the test data:

    * **Run-away members.** A point is refused (``accepted=False``) when its draws are not
      finite or one member's own validation LPPD trails the pooled one by more than
      ``max_member_gap`` nats per point: that member's chain has left the data (a step size
      beyond its stability limit can drive a chain far off without a non-finite number),
      and the pooled LPPD would hide it at a cost of at most log K while its predictions
      (e.g. the posterior-mean RMSE) are ruined.
    * **The grid's edges.** When the best accepted point is the smallest or the largest step
      size tried, the grid is extended beyond that edge by its own ratio (the grid is taken
      as geometric: the ratio of its two nearest points), up to ``max_extensions`` more runs,
      so that a choice at an edge is a measured optimum rather than the grid's limit. An edge
      that beats its neighbour by no more than ``EDGE_GAIN`` (0.01 nats per point) is a flat
      stretch and is not extended.

    Every run compiles its own loop (the step size is a static setting of a kernel); the cost
    of each point is reported.

    Args:
        make_kernel: ``step_size -> kernel``, e.g. ``lambda s: SGHMC(model, step_size=s)``
            (a schedule's peak works the same way: ``lambda s: SGLD(model,
            step_size=cyclical(s, 1000, 4))``).
        step_sizes: the grid (positive; two or more for the edge extension).
        model: the NumPyro model; ``model_args`` its training data.
        rng_key: the key of every run (the same draws of noise and batches at every point).
        validation: the model's positional arguments on held-out data, e.g. ``(X_val, y_val)``.
        init_params: the members' starting points (unconstrained, member axis first), e.g. a
            deep ensemble's ``pretrained_params``; ``None``: the first run pretrains them
            (as :class:`~numpyro_smile.SMILEEnsemble` does) and every other run starts from
            them.
        max_extensions: runs allowed beyond the grid's edges (0: the grid as given).
        max_member_gap: nats per held-out point a member may trail the pooled LPPD before
            its point is refused (``math.inf``: never refuse a finite run).
        **ensemble_settings: :class:`~numpyro_smile.SMILEEnsemble`'s settings
            (``num_members``, ``num_warmup``, ``num_samples``, ``thinning``, ...).

    Returns:
        A :class:`StepSizeSelection`. When no point is accepted, the best finite one is
        chosen with a :class:`GridWarning`.

    Raises:
        ValueError: an empty grid, a step size that is not positive, or a negative
            ``max_extensions`` or ``max_member_gap``.
    """
    grid = [float(s) for s in step_sizes]
    if not grid:
        raise ValueError("step_sizes is empty: give the grid of step sizes to try.")
    if not all(math.isfinite(s) and s > 0 for s in grid):
        raise ValueError(f"step_sizes must be positive and finite, got {list(step_sizes)}.")
    if int(max_extensions) != max_extensions or max_extensions < 0:
        raise ValueError(f"max_extensions must be a whole number >= 0, got {max_extensions!r}.")
    if not max_member_gap >= 0:
        raise ValueError(f"max_member_gap must be >= 0 (nats per point), got {max_member_gap!r}.")
    settings = {"log_likelihood": False, "progress_bar": False, **ensemble_settings}
    points: list[GridPoint] = []
    runs: list[tuple[Any, SMILEEnsemble]] = []

    def run(step_size: float) -> None:
        nonlocal init_params
        kernel = make_kernel(step_size)
        run_settings = settings if init_params is None else {**settings, "pretrain_epochs": 0}
        ensemble = SMILEEnsemble(model, kernel=kernel, **run_settings)
        with warnings.catch_warnings():  # a step size too large is what the grid finds out
            warnings.simplefilter("ignore", ResetWarning)
            idata = ensemble.run(rng_key, *model_args, init_params=init_params)
        if init_params is None:
            init_params = ensemble.pretrained_params
        start = time.perf_counter()
        score, members = _validation_lppd(model, idata, validation)
        timings = ensemble.timings
        wall = (
            timings["total_s"]
            - timings.get("compile_s", 0.0)
            - timings.get("pretrain_s", 0.0)
            + time.perf_counter()
            - start
        )
        accepted = math.isfinite(score) and all(score - m <= max_member_gap for m in members)
        points.append(
            GridPoint(
                step_size,
                score,
                wall,
                timings.get("compile_s", 0.0),
                _grad_evals(ensemble, kernel),
                tuple(members),
                accepted,
            )
        )
        runs.append((idata, ensemble))

    for step_size in grid:
        run(step_size)
    for _ in range(int(max_extensions)):
        beyond = _beyond_edge(points)
        if beyond is None:
            break
        run(beyond)
    candidates = [j for j, p in enumerate(points) if p.accepted]
    if not candidates:
        warnings.warn(
            f"No step size of {[p.step_size for p in points]} was accepted: at every one the "
            "draws were not finite or a member ran away (its validation LPPD trailed the "
            f"ensemble's by more than {max_member_gap} nats per point). The best finite one "
            "is returned; try smaller step sizes.",
            GridWarning,
            stacklevel=2,
        )
        candidates = list(range(len(points)))
    best = max(candidates, key=lambda j: points[j].valid_lppd)
    return StepSizeSelection(points[best].step_size, runs[best][0], points, runs[best][1])


def _beyond_edge(points: list[GridPoint]) -> float | None:
    """The next step size past the grid's edge when the best accepted point sits on it and
    beats its neighbour by more than ``EDGE_GAIN`` (the step of the grid's ratio at that
    edge), or ``None``: the best is inside or on a flat edge, nothing is accepted, or the grid
    has a single size."""
    tried = sorted({p.step_size for p in points})
    accepted = [p for p in points if p.accepted and math.isfinite(p.valid_lppd)]
    if len(tried) < 2 or not accepted:
        return None
    best = max(accepted, key=lambda p: p.valid_lppd)
    score = {p.step_size: p.valid_lppd for p in points}
    if best.step_size == tried[0] and best.valid_lppd - score[tried[1]] > EDGE_GAIN:
        return tried[0] * tried[0] / tried[1]
    if best.step_size == tried[-1] and best.valid_lppd - score[tried[-2]] > EDGE_GAIN:
        return tried[-1] * tried[-1] / tried[-2]
    return None


def _validation_lppd(model: Callable, idata: Any, validation: tuple) -> tuple[float, list[float]]:
    """The pooled validation LPPD and each member's (``-inf`` and ``[]`` for non-finite
    draws)."""
    posterior = idata.posterior
    if not all(np.all(np.isfinite(posterior[name].values)) for name in posterior.data_vars):
        return -math.inf, []
    metrics = evaluation.evaluate(model, idata, *validation, by_member=True)
    members = [m if np.isfinite(m) else -math.inf for m in metrics["member_lppd"]]
    score = float(metrics["lppd"]) if np.isfinite(metrics["lppd"]) else -math.inf
    return score, [float(m) for m in members]


def _grad_evals(ensemble: SMILEEnsemble, kernel: KernelAdapter) -> float:
    """Full-data-equivalent gradient evaluations of warmup and sampling, all members."""
    steps = ensemble.num_members * (ensemble.num_warmup + ensemble.num_samples)
    per_step = getattr(kernel.config, "num_integration_steps", 1)
    plates = ensemble.subsample_plates
    share = math.prod(p.subsample_size / p.size for p in plates.values()) if plates else 1.0
    if ensemble.full_batch:
        share = 1.0
    return float(steps * per_step * share)
