"""The benchmarks' shared protocol: every method from the same deep ensemble, at equal cost.

Used by the UCI suite (:mod:`benchmarks.uci`) and the image and text benchmarks
(:mod:`benchmarks.images`, :mod:`benchmarks.text`). A *problem* is one data set, seed and
budget (see :class:`Problem`); for it, :func:`run_methods` trains one deep ensemble
(``de``: ``SMILEEnsemble``'s pretraining) and starts **every sampler from its K members**:

* ``psmile``, ``smile``, ``smile-naive``: our kernel in mini-batch mode, with the
  gradient-noise preconditioner, without it, and without any tuning (fixed step size 1e-3,
  the papers' initial value); ``mile``: the same kernel with full-data gradients;
* ``sgld``, ``sghmc``, ``adasghmc``, ``csgld``: our stochastic-gradient kernels
  (``SMILEEnsemble(model, kernel=...)``): SGLD; SGHMC with BlackJAX's protocol (10 steps per
  mini-batch from a fresh momentum, friction 0.01); scale-adapted SGHMC; cyclical SGLD (4
  cosine cycles over the sampling steps, draws from each cycle's sampling half only). Each
  takes the same number of mini-batch gradients as ``psmile`` (two per McLachlan step) with
  the same epoch batch schedule; its step size (cSGLD: the cycles' peak) is chosen on
  validation LPPD from the budget's grid by ``select_step_size`` (``GRID_SCALE``; a point
  where a member runs away is refused, and a best point at the grid's edge extends the grid
  by up to ``max_extensions`` more sizes).

A record (one method) holds the problem's test metrics (:meth:`Problem.metrics`), timings
in seconds (``wall_s``: the method's own run with compilation, ``compile_s``, ``pretrain_s``
of the shared deep ensemble, ``warmup_s``, ``sampling_s``), ``grad_evals`` (full-data-
equivalent gradient evaluations of warmup and sampling, all members: a mini-batch gradient
counts B / N), ``resets``, ``peak_rss_mb`` (the method's own peak resident set, MiB), the
step sizes and, for the baselines, their grid (``grid_wall_s`` and ``grid_grad_evals``: what
the other grid points cost, compilation included).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import arviz as az
import jax
import numpy as np

from numpyro_smile import (
    SGHMC,
    SGLD,
    AdaSGHMC,
    SMILEConfig,
    SMILEEnsemble,
    cyclical,
    inference_data,
    memory,
    select_step_size,
)
from numpyro_smile.kernel import KernelAdapter

#: The stochastic-gradient baselines (our kernels, step size chosen on a validation grid).
SG_METHODS = ("sgld", "sghmc", "adasghmc", "csgld")
#: Our kernel's variants (``mile``: full-data gradients; ``psmile-limit``: pSMILE whose warmup
#: starts at the noise-limited step size instead of at most 1e-3).
SMILE_METHODS = ("psmile", "smile", "smile-naive", "mile", "psmile-limit")
#: Step sizes of the baselines' grids, c in the budget's ``grid`` times a scale set by the
#: number N of likelihood terms: SGLD's step is a variance (stable below ~1 / (largest
#: curvature) ~ 1 / N), SGHMC's a time step (stable below ~1 / sqrt(N)); c = 1 is near the
#: stability limit of a unit-curvature datum. cSGLD's grid scales the peak of its cycles as
#: SGLD's; AdaSGHMC's centres on Springenberg et al.'s default 0.01 / sqrt(N) (c = 0.1), its
#: step being scale-free.
GRID_SCALE: dict[str, Callable[[int], float]] = {
    "sgld": lambda n: 0.1 / n,
    "csgld": lambda n: 0.1 / n,
    "sghmc": lambda n: 1.0 / math.sqrt(n),
    "adasghmc": lambda n: 0.1 / math.sqrt(n),
}
#: SGHMC as BlackJAX's ``sghmc`` kernel runs it: 10 steps per mini-batch from a fresh
#: momentum at every call, friction ``alpha`` = 0.01 per unit time (BlackJAX's default), i.e.
#: ``momentum_decay = alpha * step_size`` per step.
SGHMC_STEPS = 10
SGHMC_FRICTION = 0.01
#: cSGLD: cosine cycles over the sampling steps (Zhang et al. 2020); the first half of each
#: explores (no noise, draws dropped), warmup explores at the peak step size.
CSGLD_CYCLES = 4
NAIVE_STEP_SIZE = 1e-3
#: The ``step_size`` that starts pSMILE's warmup at the noise limit: an adapting step never
#: exceeds the limit, so a larger start is cut to it at the first step.
LIMIT_STEP_SIZE = 1.0


class Problem(Protocol):
    """One data set, seed and budget, as the runners read it.

    Attributes:
        model: the NumPyro model with its mini-batch plate (``subsample_size`` = B).
        split: training, validation and test data, each a tuple of the model's positional
            arguments (``(X, y)``, or ``(tokens,)`` for a language model).
        key: the seed's PRNG key.
        budget: ``members``, ``warmup``, ``samples``, ``thinning`` (steps per chain),
            ``pretrain_epochs`` (or ``pretrain_steps``, and optionally
            ``pretrain_batch_size``), ``grid`` (the baselines' c values) and optionally
            ``max_extensions`` (grid runs beyond its edges; default 2).
        n_train: N, the size of the mini-batch plate over the training data.
        batch_size: B, its mini-batch size.
        n_likelihood: the number of likelihood terms (N, or N x T tokens for sequences):
            what sets the baselines' step-size scale (``GRID_SCALE``).
    """

    model: Callable
    split: Any
    key: jax.Array
    budget: dict
    n_train: int
    batch_size: int
    n_likelihood: int

    def metrics(self, idata: az.InferenceData, group: str = "posterior") -> dict:
        """Test metrics of ``idata[group]`` (``"pretrained"``: the deep ensemble)."""
        ...

    def config(self) -> dict:
        """The problem's settings, copied into every record."""
        ...


def ensemble_settings(problem: Problem, **kwargs: Any) -> dict:
    """``SMILEEnsemble``'s settings of the budget (``kwargs`` override them)."""
    budget = problem.budget
    settings = {
        "num_members": budget["members"],
        "num_warmup": budget["warmup"],
        "num_samples": budget["samples"],
        "thinning": budget["thinning"],
        "pretrain_epochs": budget.get("pretrain_epochs", 0),
        "pretrain_steps": budget.get("pretrain_steps"),
        "log_likelihood": False,
        "progress_bar": False,
    }
    if "pretrain_batch_size" in budget:
        settings["pretrain_batch_size"] = budget["pretrain_batch_size"]
    return settings | kwargs


def run_de(problem: Problem) -> tuple[dict, dict]:
    """Pretrain the deep ensemble once; returns its record and the members' unconstrained
    parameters (member axis first).

    ``SMILEEnsemble.warmup`` with no warmup steps pretrains and initialises the chains without
    compiling a sampling loop; the members' ``InferenceData`` (their points as one draw each,
    in the ``pretrained`` group as ``run`` would give it) is assembled directly."""
    runner = SMILEEnsemble(problem.model, **ensemble_settings(problem, num_warmup=0))
    start = time.perf_counter()
    runner.warmup(problem.key, *problem.split.train, validation=problem.split.valid)
    params = runner.pretrained_params
    assert params is not None
    pretraining = runner.to_checkpoint().pretraining
    idata = inference_data.to_inference_data(
        problem.model,
        problem.split.train,
        {},
        subsample_plates=runner.subsample_plates,
        draws=jax.tree.map(lambda a: np.asarray(a)[:, None], params),
        sample_stats=None,
        pretrained=params,
        pretraining=pretraining,
        rng_key=problem.key,
        log_likelihood=False,
    )
    record = {
        "method": "de",
        **problem.metrics(idata, "pretrained"),
        "wall_s": runner.timings["pretrain_s"],
        "compile_s": None,
        "pretrain_s": runner.timings["pretrain_s"],
        "warmup_s": 0.0,
        "sampling_s": 0.0,
        "grad_evals": 0.0,
        "pretrain_grad_evals": _pretrain_grad_evals(pretraining, problem, runner),
        "resets": 0,
        "setup_s": time.perf_counter() - start,
    }
    return record, params


def _pretrain_grad_evals(pretraining: dict, problem: Problem, runner: SMILEEnsemble) -> float:
    """Full-data-equivalent gradient evaluations of pretraining, all members."""
    batch = min(runner.pretrain_batch_size or problem.batch_size, problem.n_train)
    members = problem.budget["members"]
    if runner.pretrain_steps is not None:
        return float(members * runner.pretrain_steps * batch / problem.n_train)
    epochs = np.sum(pretraining["num_epochs"])
    per_epoch = (problem.n_train // batch) * batch
    return float(epochs * per_epoch / problem.n_train)


def run_smile_family(problem: Problem, method: str, de_params: dict, de: dict) -> dict:
    """Our kernel (``psmile``, ``smile``, ``smile-naive``, ``mile`` or ``psmile-limit``) from
    the members."""
    config = {
        "psmile": SMILEConfig(),
        "smile": SMILEConfig(precondition=False),
        "smile-naive": SMILEConfig(adapt=False, precondition=False, step_size=NAIVE_STEP_SIZE),
        "mile": SMILEConfig(),
        "psmile-limit": SMILEConfig(step_size=LIMIT_STEP_SIZE),
    }[method]
    runner = SMILEEnsemble(
        problem.model,
        **ensemble_settings(
            problem,
            config=config,
            full_batch=method == "mile",
            pretrain_epochs=0,
            pretrain_steps=None,
        ),
    )
    start = time.perf_counter()
    idata = runner.run(
        jax.random.fold_in(problem.key, 1), *problem.split.train, init_params=de_params
    )
    wall = time.perf_counter() - start
    budget = problem.budget
    steps = budget["members"] * (budget["warmup"] + budget["samples"])
    share = 1.0 if method == "mile" else problem.batch_size / problem.n_train
    timings = runner.timings
    state = runner.last_state
    assert state is not None
    return {
        "method": method,
        **problem.metrics(idata),
        "wall_s": wall,
        "compile_s": timings["compile_s"],
        "pretrain_s": de["pretrain_s"],
        "warmup_s": timings["warmup_s"] + timings["init_s"],
        "sampling_s": timings["sampling_s"],
        "grad_evals": 2.0 * steps * share,  # McLachlan: two gradients per step
        "resets": int(np.sum(state.num_resets)),
        "step_size": np.asarray(state.step_size).tolist(),
        "L": np.asarray(state.L).tolist() if method == "mile" else None,
    }


def sg_kernel(problem: Problem, method: str, step_size: float, sampling: int) -> KernelAdapter:
    """The baseline ``method``'s kernel at ``step_size`` (cSGLD: the peak of its cycles over
    the ``sampling`` steps)."""
    model = problem.model
    if method == "sgld":
        return SGLD(model, step_size=step_size, verbose=False)
    if method == "csgld":
        schedule = cyclical(step_size, sampling, CSGLD_CYCLES)
        return SGLD(model, step_size=schedule, verbose=False)
    if method == "adasghmc":
        return AdaSGHMC(model, step_size=step_size, verbose=False)
    return SGHMC(
        model, step_size=step_size, momentum_decay=SGHMC_FRICTION * step_size,
        num_integration_steps=SGHMC_STEPS, refresh_momentum=True, verbose=False,
    )  # fmt: skip


def run_sg(problem: Problem, method: str, de_params: dict, de: dict) -> dict:
    """A stochastic-gradient baseline (our kernels, from the deep ensemble's members) with the
    step size chosen on validation LPPD from the budget's grid (``select_step_size``)."""
    budget = problem.budget
    grads_per_step = SGHMC_STEPS if method == "sghmc" else 1
    # the same number of mini-batch gradients as psmile (two per McLachlan step)
    warmup = max(1, 2 * budget["warmup"] // grads_per_step)
    sampling = max(1, 2 * budget["samples"] // grads_per_step)
    draws = min(budget["samples"] // budget["thinning"], sampling)
    thinning = sampling // draws
    selection = select_step_size(
        lambda step_size: sg_kernel(problem, method, step_size, sampling),
        [c * GRID_SCALE[method](problem.n_likelihood) for c in budget["grid"]],
        problem.model,
        *problem.split.train,
        rng_key=jax.random.fold_in(problem.key, 3),
        validation=problem.split.valid,
        init_params=de_params,
        max_extensions=budget.get("max_extensions", 2),
        **ensemble_settings(
            problem,
            num_warmup=warmup,
            num_samples=sampling,
            thinning=thinning,
            pretrain_epochs=0,
            pretrain_steps=None,
        ),
    )
    chosen = next(p for p in selection.grid if p.step_size == selection.step_size)
    timings = selection.ensemble.timings
    state = selection.ensemble.last_state
    assert state is not None
    others = [p for p in selection.grid if p is not chosen]
    return {
        "method": method,
        **problem.metrics(selection.idata),
        "wall_s": chosen.wall_s + chosen.compile_s,
        "compile_s": chosen.compile_s,
        "pretrain_s": de["pretrain_s"],
        "warmup_s": timings["warmup_s"] + timings["init_s"],
        "sampling_s": timings["sampling_s"],
        "grad_evals": chosen.grad_evals,
        "resets": int(np.sum(state.num_resets)),
        "step_size": selection.step_size,
        "grid": [
            {
                "step_size": p.step_size,
                "valid_lppd": p.valid_lppd,
                "worst_member_lppd": min(p.member_lppd, default=-math.inf),
                "accepted": p.accepted,
            }
            for p in selection.grid
        ],
        # what the other grid points cost, their compilation included (the step size is a
        # static setting of a kernel: every point compiles its own loop)
        "grid_wall_s": sum(p.wall_s + p.compile_s for p in others),
        "grid_grad_evals": selection.grid_grad_evals,
    }


#: A runner of a method outside this module: ``(problem, de_params, de_record) -> record``.
Runner = Callable[[Problem, dict, dict], dict]


def run_methods(
    problem: Problem,
    methods: Iterable[str],
    extra: dict[str, Runner] | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Every method of ``methods`` on ``problem``, in order, from one deep ensemble; each
    record with its own peak resident set and the problem's ``config()``, printed as a JSON
    line and passed to ``on_record`` as it is done. ``extra`` runs further methods (e.g. the
    UCI suite's NUTS)."""
    extra = extra or {}
    memory.reset_peak_rss()  # each method's own peak (Linux; elsewhere the process's so far)
    de, de_params = run_de(problem)
    de["peak_rss_mb"] = memory.peak_rss_bytes() / 2**20
    records = []
    for method in methods:
        memory.reset_peak_rss()
        if method == "de":
            record = de
        elif method in SMILE_METHODS:
            record = run_smile_family(problem, method, de_params, de)
        elif method in SG_METHODS:
            record = run_sg(problem, method, de_params, de)
        else:
            record = extra[method](problem, de_params, de)
        record = {
            **record,
            "total_s": record["wall_s"] + de["pretrain_s"],
            "peak_rss_mb": record.get("peak_rss_mb", memory.peak_rss_bytes() / 2**20),
            **problem.config(),
        }
        records.append(rounded(record))
        print(json.dumps(records[-1]), flush=True)
        if on_record is not None:
            on_record(records[-1])
    return records


def rounded(record: dict) -> dict:
    """``record`` with floats to 5 significant digits and non-finite ones as ``None`` (JSON
    has no NaN), inside lists and dicts too."""

    def round_(value):
        if isinstance(value, float):
            return float(f"{value:.5g}") if math.isfinite(value) else None
        if isinstance(value, list):
            return [round_(v) for v in value]
        if isinstance(value, dict):
            return {k: round_(v) for k, v in value.items()}
        return value

    return {k: round_(v) for k, v in record.items()}


def mean(records: list[dict], key: str) -> float:
    """Mean of ``key`` over the records that have it (NaN when none does)."""
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else math.nan
