"""``SMILE``: auto-tuned (stochastic-gradient) MCLMC as a NumPyro ``MCMCKernel``.

One kernel covers the MCLMC family, chosen by the model and a few arguments:

* a model with ``numpyro.plate(name, N, subsample_size=B)`` -> SG-MCLMC on a fresh mini-batch
  every step (SMILE), with the energy-error tuner and reset guardrail; ``precondition=True``
  (the default) adds the gradient-noise preconditioner (pSMILE);
* a model without a subsample plate -> full-batch MCLMC with partial velocity refresh and
  MILE's tuning during warmup (step size from the energy variance, L from the posterior
  variances and from the effective sample size);
* ``adapt=False`` with a fixed ``step_size`` -> the "naive" variants, for ablations.

Example::

    from numpyro.infer import MCMC
    from numpyro_smile import SMILE

    mcmc = MCMC(SMILE(model), num_warmup=2000, num_samples=1000, num_chains=4,
                chain_method="vectorized")
    mcmc.run(jax.random.key(0), X, y)
    idata = arviz.from_numpyro(mcmc)   # log_likelihood over all N data points
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import potential_energy
from numpyro.util import identity, is_prng_key

from numpyro_smile import batching, dynamics, model_views, tuning

__all__ = ["SMILE", "SMILEState"]

#: Initial step size in full batch (MILE's for tabular networks); the full-batch tuner corrects
#: any start within a few steps.
DEFAULT_STEP_SIZE_FULL_BATCH = 1e-2
#: Mini-batch mode starts at the noise-limited step size (see ``max_noise_angle``), at most
#: this (the SMILE paper's initial step size for UCI networks); the controller's factor f on
#: the noise limit starts at the ratio and never exceeds 1.
STEP_SIZE_MINIBATCH_MAX = 1e-3
#: Mini-batches drawn at the initial point to estimate the gradient noise.
NUM_NOISE_PROBES = 8
#: Where chains start (before pretraining) when no ``init_params`` are given: nearer the
#: prior's centre than NUTS's radius 2 in unconstrained space, since MCLMC moves one step size
#: per step. Neural networks are better started from trained points (``init_params``).
DEFAULT_INIT_STRATEGY = init_to_uniform(radius=0.5)
#: Gradient sanitising in mini-batch mode (as SMILE's reference code does): NaN -> 0, then clip.
GRADIENT_CLIP = 1e6
#: Full batch: dE comes from per-datum differences once the potential's float rounding
#: exceeds this share of the targeted |dE| (see ``_needs_per_datum_energy``).
ENERGY_ROUNDING_SHARE = 0.05


class SMILEState(NamedTuple):
    """State of one chain (or, in vectorized mode, of all chains: every field but ``rng_key``
    then has a leading ``(num_chains,)`` axis).

    Attributes:
        i: iteration counter; adaptation runs while ``i < num_warmup``.
        z: dict of unconstrained latent values (the sample field).
        potential_energy: -log p at ``z``; a mini-batch estimate in SMILE mode, whose noise sd
            is about N / sqrt(B) times the per-datum log-likelihood sd.
        energy_change: energy error dE of the last proposed step (0 when it was non-finite).
        step_size: step size epsilon for the next step (path length in preconditioned units).
        step_size_factor: mini-batch mode: the SMILE controller's factor f <= 1 on the
            noise-limited step size (epsilon = f * limit while adapting).
        L: momentum decoherence length (``inf``: no partial refresh, SMILE's default).
        diverging: True when the guardrail rejected the last step (a "reset").
        num_resets: resets so far (int32).
        momentum: ``(d,)`` unit velocity (redrawn uniformly after a reset).
        logdensity_grad: ``(d,)`` cached raw gradient of log p at ``z``.
        energy_tuner: SMILE tuner statistics (``None`` in full-batch mode).
        mclmc_tuner: full-batch tuner statistics (``None`` in mini-batch mode).
        grad_noise: running mean/std of the raw gradient: pSMILE's preconditioner and the
            noise-limited step size (``None`` in full batch without preconditioning).
        batches: ``{plate: EpochBatchState}`` batch schedules (``None`` for full batch).
        rng_key: a single PRNG key (also in vectorized mode).
    """

    i: jax.Array
    z: dict
    potential_energy: jax.Array
    energy_change: jax.Array
    step_size: jax.Array
    step_size_factor: jax.Array
    L: jax.Array
    diverging: jax.Array
    num_resets: jax.Array
    momentum: jax.Array
    logdensity_grad: jax.Array
    energy_tuner: tuning.EnergyTunerState | None
    mclmc_tuner: tuning.MCLMCTunerState | None
    grad_noise: tuning.GradientNoiseState | None
    batches: dict | None
    rng_key: jax.Array


class _StepConfig(NamedTuple):
    """Static (hashable, Python-valued) configuration of the compiled step."""

    num_warmup: int
    plates: tuple  # ((name, PlateInfo), ...)
    batch_schedule: str
    coefficients: tuple
    refresh: bool
    adapt: bool
    adapt_during_sampling: bool
    precondition: bool
    max_noise_angle: float
    energy: tuning.EnergyTunerConfig
    mclmc: tuning.MCLMCTunerConfig | None


def _sanitize(grad: jax.Array) -> jax.Array:
    """Mini-batch gradient guardrail: NaN -> 0, infinities and large values clipped."""
    return jnp.clip(
        jnp.nan_to_num(grad, nan=0.0, posinf=GRADIENT_CLIP, neginf=-GRADIENT_CLIP),
        -GRADIENT_CLIP,
        GRADIENT_CLIP,
    )


def _preconditioner(config: _StepConfig, grad_noise, position: jax.Array) -> jax.Array:
    """The diagonal scale s of the next step: pSMILE's, or ones."""
    if config.precondition:
        return tuning.gradient_noise_scale(grad_noise)
    return jnp.ones_like(position)


def _value_and_grad(config: _StepConfig, logdensity_fn: Callable, indices: dict):
    """``x -> (log p(x), grad)`` on one mini-batch (sanitised) or on the full data."""

    def value_and_grad(x):
        value, grad = jax.value_and_grad(logdensity_fn)(x, indices)
        return value, (_sanitize(grad) if config.plates else grad)

    return value_and_grad


def _chain_step(
    config: _StepConfig,
    logdensity_fn: Callable,
    unravel: Callable,
    state: SMILEState,
    indices: dict,
    rng_key: jax.Array,
    per_datum_energy: jax.Array | None = None,
    logdensity_terms_fn: Callable | None = None,
) -> SMILEState:
    """One SMILE / MCLMC transition of a single chain on the given batch indices.

    Guardrails and adaptation included; no ``lax.cond`` on per-chain values (this runs under
    ``vmap``, where such a ``cond`` would evaluate both branches). ``per_datum_energy`` is an
    unbatched scalar: when True, the full-batch energy error is summed from per-datum
    differences (``logdensity_terms_fn``, see :func:`_needs_per_datum_energy`).
    """
    value_and_grad = _value_and_grad(config, logdensity_fn, indices)

    position, _ = ravel_pytree(state.z)
    scale = _preconditioner(config, state.grad_noise, position)
    current = dynamics.IntegratorState(
        position, state.momentum, -state.potential_energy, state.logdensity_grad
    )
    proposal, kinetic_change, energy_change = dynamics.mclmc_step(
        current,
        rng_key,
        value_and_grad,
        state.step_size,
        state.L,
        scale,
        config.coefficients,
        config.refresh,
    )
    if logdensity_terms_fn is not None:
        energy_change = jax.lax.cond(
            per_datum_energy,
            lambda: (
                kinetic_change
                - _logdensity_difference(logdensity_terms_fn, position, proposal.position)
            ).astype(energy_change.dtype),
            lambda: energy_change,
        )
    finite = (
        jnp.all(jnp.isfinite(proposal.position))
        & jnp.isfinite(proposal.logdensity)
        & jnp.isfinite(energy_change)
    )
    warming_up = state.i < config.num_warmup
    keep_adapting = warming_up | config.adapt_during_sampling

    step_size, factor, L = state.step_size, state.step_size_factor, state.L
    energy_tuner, mclmc_tuner = state.energy_tuner, state.mclmc_tuner
    if config.plates:
        energy_tuner, factor, reset = tuning.energy_tuner_update(
            energy_tuner, factor, energy_change, config.adapt & keep_adapting, config.energy
        )
        factor = jnp.minimum(factor, 1.0)
    else:
        reset = ~finite
        if config.mclmc is not None:
            accepted_z = jnp.where(reset, position, proposal.position) / scale
            tuned = tuning.mclmc_tuner_update(
                mclmc_tuner, config.mclmc, step_size, L, energy_change, accepted_z, finite
            )
            mclmc_tuner, step_size, L = jax.tree.map(
                lambda a, b: jnp.where(warming_up, a, b), tuned, (mclmc_tuner, step_size, L)
            )

    # A reset keeps the old position; _transition then draws a fresh velocity direction.
    new = jax.tree.map(lambda new, old: jnp.where(reset, old, new), proposal, current)

    grad_noise = state.grad_noise
    if grad_noise is not None:
        if config.plates:
            update_noise = keep_adapting & ~reset
        else:  # full batch: learn during phase I only, then freeze for tuning and sampling
            update_noise = (
                state.i < config.mclmc.num_phase1 if config.mclmc else warming_up
            ) & ~reset
        updated = tuning.gradient_noise_update(grad_noise, new.logdensity_grad)
        grad_noise = jax.tree.map(lambda a, b: jnp.where(update_noise, a, b), updated, grad_noise)
    if config.plates and config.adapt:
        # epsilon = f * (noise-limited step): it follows the gradient noise as the chain moves
        # (large far from the posterior's bulk, smaller near it) and the SMILE controller f.
        limit = tuning.noise_limited_step_size(
            grad_noise, _preconditioner(config, grad_noise, position), config.max_noise_angle
        )
        step_size = jnp.where(keep_adapting, factor * limit, step_size)

    return SMILEState(
        i=state.i + 1,
        z=unravel(new.position),
        potential_energy=-new.logdensity,
        energy_change=jnp.where(jnp.isfinite(energy_change), energy_change, 0.0),
        step_size=step_size,
        step_size_factor=factor,
        L=L,
        diverging=reset,
        num_resets=state.num_resets + reset.astype(jnp.int32),
        momentum=new.momentum,
        logdensity_grad=new.logdensity_grad,
        energy_tuner=energy_tuner,
        mclmc_tuner=mclmc_tuner,
        grad_noise=grad_noise,
        batches=state.batches,
        rng_key=state.rng_key,
    )


def _transition(
    config: _StepConfig,
    logdensity_fn: Callable,
    unravel: Callable,
    state: SMILEState,
    num_chains: int | None,
    logdensity_terms_fn: Callable | None = None,
) -> SMILEState:
    """One transition of one chain (``num_chains=None``) or of a vectorized ensemble.

    Work that happens rarely (fresh velocities after resets, the ESS at the end of warmup,
    per-datum energy errors while the potential is small) is decided here, by a scalar
    ``lax.cond`` outside ``vmap`` (or on an unbatched predicate), where it is skipped when not
    needed (under ``vmap`` a ``cond`` on batched values evaluates both branches every step).
    """
    key, key_batch, key_chains, key_redirect = jax.random.split(state.rng_key, 4)
    batches, indices = batching.schedules_next(config.plates, state.batches, key_batch, num_chains)
    state = state._replace(batches=batches)
    per_datum = None
    if logdensity_terms_fn is not None:
        per_datum = _needs_per_datum_energy(config, state)
    step = partial(
        _chain_step, config, logdensity_fn, unravel, logdensity_terms_fn=logdensity_terms_fn
    )
    if num_chains is None:
        new = step(state, indices, key_chains, per_datum)
        count = None if new.mclmc_tuner is None else new.mclmc_tuner.count - 1
    else:
        axes = _batched_axes(state)
        chain_keys = jax.random.split(key_chains, num_chains) if config.refresh else None
        new = jax.vmap(step, in_axes=(axes, 0, 0 if config.refresh else None, None), out_axes=axes)(
            state, indices, chain_keys, per_datum
        )
        count = None if new.mclmc_tuner is None else new.mclmc_tuner.count[0] - 1
    new = new._replace(momentum=_redirect_after_reset(new.momentum, new.diverging, key_redirect))
    if config.mclmc is not None and config.mclmc.num_phase3 > 0:
        L_from_trace = partial(tuning.mclmc_tuner_L_from_trace, config=config.mclmc)
        if num_chains is not None:
            L_from_trace = jax.vmap(L_from_trace)
        new_L = jax.lax.cond(
            tuning.mclmc_tuner_is_last_phase3_step(config.mclmc, count)
            & (state.i.reshape(-1)[0] < config.num_warmup),
            lambda: L_from_trace(new.mclmc_tuner, step_size=new.step_size),
            lambda: new.L,
        )
        new = new._replace(L=new_L)
    # Keep every leaf's dtype (a float64 potential under x64 must not promote a float32 state).
    new = jax.tree.map(lambda a, b: a.astype(b.dtype), new, state)
    return new._replace(rng_key=key)


def _logdensity_difference(terms_fn: Callable, old: jax.Array, new: jax.Array) -> jax.Array:
    """log p(new) - log p(old), summed from per-datum differences (no large-number rounding)."""
    return sum(jnp.sum(a - b) for a, b in zip(terms_fn(new), terms_fn(old)))


def _needs_per_datum_energy(config: _StepConfig, state: SMILEState) -> jax.Array:
    """Full batch: whether the potential's rounding, |U| * eps, reaches ENERGY_ROUNDING_SHARE
    of the energy error the tuner aims at, sqrt(d * Var[dE] / d).

    The potential is a sum over N data points: at N = 1e6 in float32 |U| ~ 1e6 is resolved to
    ~0.1, coarser than the targeted |dE| (MILE's end target Var[dE] / d = 0.1 at d = 6: 0.8;
    BlackJAX's 5e-4: 0.05), and U(new) - U(old) then measures rounding: the step-size rule
    shrank the step 400x (float64: no change). Above the threshold, dE is summed from
    per-datum differences at the cost of two forward passes per step; below it (small data,
    float64) nothing changes. A scalar, decided for all chains at once.
    """
    energy = state.potential_energy
    dim = state.momentum.shape[-1]
    target = config.mclmc.energy_var_end if config.mclmc is not None else 5e-4
    threshold = ENERGY_ROUNDING_SHARE * math.sqrt(dim * target)
    return jnp.max(jnp.abs(energy)) * jnp.finfo(energy.dtype).eps > threshold


def _redirect_after_reset(momentum: jax.Array, reset: jax.Array, rng_key: jax.Array):
    """A uniformly random velocity for every chain that was reset, drawn only when one was.

    The reference code zeroes the velocity, so the next step starts along the (noisy)
    gradient, towards the mode: on a linear regression that shrank the posterior sd by ~7
    percent. A uniform direction is the velocity's stationary law and adds no such pull.
    """

    def redirect():
        fresh = dynamics.random_unit_vector(rng_key, momentum.shape, momentum.dtype)
        return jnp.where(reset[..., None], fresh, momentum)

    if jax.default_backend() != "cpu":
        return redirect()  # on accelerators the draw is cheap and a cond's predicate is not
    return jax.lax.cond(jnp.any(reset), redirect, lambda: momentum)


def _batched_axes(state: SMILEState) -> SMILEState:
    """vmap axes of a vectorized state: every field batched except the single ``rng_key``."""
    return SMILEState(*([0] * (len(SMILEState._fields) - 1)), None)


def _check_options(bools: dict, numbers: dict, integers: dict) -> None:
    """Type errors for options of the wrong kind (``precondition="yes"``, ``step_size="1e-3"``),
    which would otherwise be accepted and misread; ``None`` means "the default" for each."""
    for name, value in bools.items():
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    for name, value in numbers.items():
        if value is not None and (
            isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number))
        ):
            raise TypeError(f"{name} must be a number, got {value!r}.")
    for name, value in integers.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}.")


def _energy_var_schedule(desired_energy_var) -> tuple[float, float]:
    """``desired_energy_var`` as a validated ``(start, end)`` pair of positive floats."""
    if desired_energy_var is None:
        desired_energy_var = tuning.ACCURATE_ENERGY_VAR
    if isinstance(desired_energy_var, (int, float)) and not isinstance(desired_energy_var, bool):
        desired_energy_var = (desired_energy_var, desired_energy_var)
    pair = tuple(desired_energy_var) if isinstance(desired_energy_var, (tuple, list)) else ()
    if not (
        len(pair) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
        and all(math.isfinite(v) and v > 0 for v in pair)
    ):
        raise ValueError(
            "desired_energy_var must be a positive number or a (start, end) pair of them "
            f"(e.g. 5e-4, or MILE's (0.5, 0.1)), got {desired_energy_var!r}."
        )
    return float(pair[0]), float(pair[1])


class SMILE(MCMCKernel):
    """Auto-tuned microcanonical Langevin sampler, mini-batched when the model subsamples.

    Args:
        model: a NumPyro model. Mark the likelihood with
            ``numpyro.plate(name, N, subsample_size=B)`` (and ``numpyro.subsample`` the data)
            for SMILE; without a subsample plate the kernel runs full-batch MCLMC (MILE).
        potential_fn: alternatively, ``z -> U(z)`` (full batch) or, with ``data_size`` and
            ``subsample_size``, ``(z, batch_indices) -> U_B(z)``, an unbiased mini-batch
            estimate of the full potential. Requires ``init_params`` in ``mcmc.run``.
        step_size: initial step size (default: in mini-batch mode the noise-limited step
            size or 1e-3, whichever is smaller; 1e-2 in full batch); adapted unless
            ``adapt=False``.
        L: momentum decoherence length. ``None``: no partial refresh in mini-batch mode (the
            gradient noise and resets decorrelate, as in the paper) and MILE's tuning in full
            batch. A number fixes it.
        precondition: learn a diagonal preconditioner from the gradient's running std.
            ``None`` (default): on in mini-batch mode (pSMILE), off in full batch, as in MILE's
            configuration. In full batch it is learned during the first 80 percent of warmup
            and then frozen (it approximates the posterior scales); measured on small UCI
            networks it made MILE's step-size tuning collapse (yacht: test LPPD -0.37 with it,
            2.76 without), hence off by default there.
        adapt: adapt the step size (and L in full batch) during warmup. False with a fixed
            ``step_size`` gives the naive variants.
        adapt_during_sampling: mini-batch mode: keep the step-size controller and the
            preconditioner running after warmup, as in the SMILE paper. False (default)
            freezes them after warmup, so that every chain is a time-homogeneous Markov chain.
            The reset guardrail always stays on. Full-batch tuning always stops after warmup.
        reset_quantile: mini-batch mode: a step whose |dE| exceeds this quantile of the
            Gamma distribution fitted to recent |dE| is rejected (a reset); 1.0 disables
            resets. See :class:`~numpyro_smile.tuning.EnergyTunerConfig`.
        adapt_tail_prob: mini-batch mode: total probability of the two tails of the fitted
            |dE| distribution that change the step size (split by ``shrink_share``).
        adapt_rate: mini-batch mode: relative step-size change per adapting step.
        smoothing: mini-batch mode: EMA rate of the running mean and std of |dE|.
        shrink_share: share of ``adapt_tail_prob`` on the shrinking (upper) tail: 0.5 (default)
            is drift-free; the paper's 2/3 shrinks the step size steadily when mini-batch noise
            dominates the energy error (measured: a 7x smaller step after 10k steps on a linear
            regression, and chains that stall).
        max_noise_angle: noise guardrail (radians): while adapting, the step size is
            f * max_noise_angle * (d - 1) / |s * sigma_g|, where sigma_g is the running std of
            the mini-batch gradient and f <= 1 the SMILE controller's factor. It bounds how far
            gradient noise turns the velocity per step, which is what biases SG-MCLMC (sd about
            5-10 percent low at 0.2 on a linear regression, 25 percent at 0.6).
        desired_energy_var: full batch: desired Var[dE] per dimension, a float or a
            ``(start, end)`` schedule. ``None`` (default): BlackJAX's 5e-4
            (:data:`~numpyro_smile.tuning.ACCURATE_ENERGY_VAR`), for moments as accurate as
            NUTS's. MILE's ``(0.5, 0.1)`` (:data:`~numpyro_smile.tuning.MILE_ENERGY_VAR`, what
            ``SMILEEnsemble(full_batch=True)`` uses) takes about 2.5x larger steps at a bias:
            on a curved target (Haario's banana) it left a variance at 18-37 percent of the
            truth.
        integrator: ``"mclachlan"`` (2 gradients per step, default) or ``"leapfrog"`` (1).
        init_strategy: NumPyro init strategy when ``init_params`` is not given (default
            ``init_to_uniform(radius=0.5)``: see ``DEFAULT_INIT_STRATEGY``).
        pretrain_steps: when ``init_params`` is not given, each chain first runs this many
            Adam steps on the (mini-batch) potential from its init point, as the MILE/SMILE
            recipe pretrains; 0 switches it off. Not counted as warmup.
        pretrain_learning_rate: Adam's learning rate for ``pretrain_steps``.
        batch_schedule: ``"epoch"`` (a fresh permutation per epoch, per chain) or
            ``"with_replacement"``.
        data_size: with ``potential_fn`` only: N, the number of data points.
        subsample_size: with ``potential_fn`` only: B, the mini-batch size of the potential.
    """

    sample_field = "z"
    default_fields = ("z", "diverging", "energy_change", "step_size", "L", "potential_energy")

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        *,
        step_size: float | None = None,
        L: float | None = None,
        precondition: bool | None = None,
        adapt: bool = True,
        adapt_during_sampling: bool = False,
        reset_quantile: float = 0.98,
        adapt_tail_prob: float = 0.1,
        adapt_rate: float = 0.02,
        smoothing: float = 0.01,
        shrink_share: float = 0.5,
        max_noise_angle: float = 0.2,
        desired_energy_var: float | tuple[float, float] | None = None,
        integrator: str = "mclachlan",
        init_strategy: Callable = DEFAULT_INIT_STRATEGY,
        pretrain_steps: int = 1000,
        pretrain_learning_rate: float = 0.02,
        batch_schedule: str = "epoch",
        data_size: int | None = None,
        subsample_size: int | None = None,
    ) -> None:
        if (model is None) == (potential_fn is None):
            raise ValueError(
                "Pass exactly one of `model` (a NumPyro model) or `potential_fn` (a function "
                "z -> potential energy); got " + ("both." if model is not None else "neither.")
            )
        if model is not None and (data_size is not None or subsample_size is not None):
            raise ValueError(
                "SMILE(model, data_size=..., subsample_size=...): a model declares its "
                "mini-batch size in its plate, numpyro.plate('data', N, subsample_size=B) "
                "(e.g. a model argument passed at mcmc.run(..., subsample_size=B)); "
                "data_size and subsample_size are for potential_fn only."
            )
        _check_options(
            bools={
                "adapt": adapt,
                "adapt_during_sampling": adapt_during_sampling,
                "precondition": precondition,
            },
            numbers={
                "step_size": step_size,
                "L": L,
                "reset_quantile": reset_quantile,
                "adapt_tail_prob": adapt_tail_prob,
                "adapt_rate": adapt_rate,
                "smoothing": smoothing,
                "shrink_share": shrink_share,
                "max_noise_angle": max_noise_angle,
                "pretrain_learning_rate": pretrain_learning_rate,
            },
            integers={"pretrain_steps": pretrain_steps},
        )
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}.")
        if L is not None and not L > 0:
            raise ValueError(f"L must be positive (or None to tune it), got {L!r}.")
        if not adapt and step_size is None:
            raise ValueError("adapt=False needs an explicit step_size (nothing would tune it).")
        if integrator not in dynamics.INTEGRATORS:
            raise ValueError(
                f"integrator must be one of {sorted(dynamics.INTEGRATORS)}, got {integrator!r}."
            )
        if batch_schedule not in batching.BATCH_SCHEDULES:
            raise ValueError(
                f"batch_schedule must be one of {batching.BATCH_SCHEDULES}, got {batch_schedule!r}."
            )
        if not 0 < reset_quantile <= 1:
            raise ValueError(f"reset_quantile must be in (0, 1], got {reset_quantile!r}.")
        if not 0 <= adapt_tail_prob < 0.75:
            raise ValueError(f"adapt_tail_prob must be in [0, 0.75), got {adapt_tail_prob!r}.")
        if not 0 < shrink_share < 1:
            raise ValueError(f"shrink_share must be in (0, 1), got {shrink_share!r}.")
        if pretrain_steps < 0 or not pretrain_learning_rate > 0:
            raise ValueError("pretrain_steps must be >= 0 and pretrain_learning_rate > 0.")
        if not max_noise_angle > 0:
            raise ValueError(f"max_noise_angle must be positive, got {max_noise_angle!r}.")
        if not (0 <= adapt_rate < 1 and 0 < smoothing <= 1):
            raise ValueError("adapt_rate must be in [0, 1) and smoothing in (0, 1].")
        if (data_size is None) != (subsample_size is None):
            raise ValueError("Give both data_size and subsample_size, or neither.")
        if data_size is not None:
            if model is not None:
                raise ValueError(
                    "data_size/subsample_size are for potential_fn only; a model declares them "
                    "with numpyro.plate(name, N, subsample_size=B)."
                )
            if subsample_size > data_size:
                raise ValueError(
                    f"subsample_size ({subsample_size}) is larger than data_size ({data_size}); "
                    "use subsample_size <= data_size."
                )
        self._model = model
        self._potential_fn = potential_fn
        self._step_size = step_size
        self._L = L
        self._precondition = precondition
        self._max_noise_angle = max_noise_angle
        self._adapt = adapt
        self._adapt_during_sampling = adapt_during_sampling
        self._energy_config = tuning.EnergyTunerConfig(
            reset_quantile, adapt_tail_prob, adapt_rate, smoothing, shrink_share=shrink_share
        )
        self._desired_energy_var = _energy_var_schedule(desired_energy_var)
        self._integrator = integrator
        self._init_strategy = init_strategy
        self._pretrain_steps = int(pretrain_steps)
        self._pretrain_learning_rate = pretrain_learning_rate
        self._batch_schedule = batch_schedule
        self._plates: dict[str, batching.PlateInfo] = (
            {"data": batching.PlateInfo(data_size, subsample_size)}
            if data_size is not None and subsample_size < data_size
            else {}
        )
        self._potential_fn_gen = None
        self._postprocess_fn_gen = None
        self._sample_fn = None
        self._unravel = None
        self._vectorized = False

    # ---------------------------------------------------------------- NumPyro protocol

    @property
    def model(self) -> Callable | None:
        """A full-data view of the model (every subsample plate sees all N points).

        ``az.from_numpyro(mcmc)`` reads this to compute ``log_likelihood`` and
        ``observed_data`` over all N points rather than one random mini-batch.
        """
        if self._model is None or not self._plates:
            return self._model
        return model_views.full_data_model(self._model, self._plates)

    @property
    def subsample_plates(self) -> dict[str, batching.PlateInfo]:
        """``{name: PlateInfo(N, B)}`` found at ``init`` (empty: full-batch mode)."""
        return dict(self._plates)

    @property
    def preconditioned(self) -> bool:
        """Whether the gradient-noise preconditioner is used: ``precondition``, or, when it is
        ``None``, in mini-batch mode only (known after ``init``)."""
        if self._precondition is None:
            return bool(self._plates)
        return self._precondition

    @property
    def expected_reset_rate(self) -> float:
        """Share of steps the guardrail resets by design: ``1 - reset_quantile`` in mini-batch
        mode (the quantile rule), 0 in full batch (where only non-finite steps are reset)."""
        return 1.0 - self._energy_config.reset_quantile if self._plates else 0.0

    @property
    def is_ensemble_kernel(self) -> bool:
        """True after a vectorized ``init``: the state then holds a single ``rng_key``."""
        return self._vectorized

    def postprocess_fn(self, model_args: tuple, model_kwargs: dict) -> Callable:
        """Constrain ``z`` (and replay deterministic sites, over the full data)."""
        if self._postprocess_fn_gen is None:
            return identity
        return self._postprocess_fn_gen(
            *model_args,
            **self._with_indices(model_kwargs, batching.full_data_indices(self._plates)),
        )

    @property
    def mode(self) -> str:
        """The variant that runs, in words (known after ``init``): e.g. ``"pSMILE, B=256 of
        N=10000"`` on mini-batches, ``"MILE, full batch"`` without a subsample plate."""
        if not self._plates:
            name = "MCLMC" if not self._adapt else "MILE"
            return f"{name}, full batch"
        name = ("pSMILE" if self.preconditioned else "SMILE") + ("" if self._adapt else "-naive")
        batches = ", ".join(
            f"B={plate.subsample_size} of N={plate.size}" for plate in self._plates.values()
        )
        return f"{name}, {batches}"

    def get_diagnostics_str(self, state: SMILEState) -> str:
        """Progress-bar text: the variant, the mean step size, and the resets next to what the
        guardrail resets by design (mini-batch mode: ``1 - reset_quantile`` of the steps; full
        batch: none), so that a healthy run reads as one."""
        resets = int(jnp.sum(state.num_resets))
        steps = max(1, int(jnp.max(state.i)) * int(np.size(state.num_resets)))
        expected = self.expected_reset_rate
        if expected > 0:
            reset_text = f"resets {100 * resets / steps:.1f}% ({100 * expected:.0f}% by design)"
        else:
            reset_text = f"resets {resets} (none expected)"
        step_size = float(jnp.mean(state.step_size))
        return f"{self.mode} | step size {step_size:.2e} | {reset_text}"

    def _with_indices(self, model_kwargs: dict, indices: dict) -> dict:
        if not self._plates:
            return model_kwargs
        return {**model_kwargs, model_views.SUBSAMPLE_KWARG: indices}

    def _logdensity_fn(self, model_args, model_kwargs) -> Callable:
        """``(x, indices) -> log p`` on flat parameters for the given data."""
        unravel = self._unravel
        if self._potential_fn is not None:
            if self._plates:
                (name,) = self._plates
                return lambda x, idx: -self._potential_fn(unravel(x), idx[name])
            return lambda x, idx: -self._potential_fn(unravel(x))

        def logdensity(x, indices):
            kwargs = self._with_indices(model_kwargs, indices)
            return -self._potential_fn_gen(*model_args, **kwargs)(unravel(x))

        return logdensity

    def _logdensity_terms_fn(self, model_args, model_kwargs) -> Callable | None:
        """Full-batch model: ``x -> [per-site, per-element log densities]``; else ``None``."""
        if self._model is None or self._plates:
            return None
        model, unravel = self._model, self._unravel
        return lambda x: model_views.log_density_terms(model, model_args, model_kwargs, unravel(x))

    def init(
        self,
        rng_key: jax.Array,
        num_warmup: int,
        init_params: dict | None = None,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
    ) -> SMILEState:
        """Check the model, build the potential and the initial state of every chain.

        Called by ``MCMC``: with a single key for one chain (``sequential``/``parallel``), or
        with ``(num_chains,)`` keys for ``chain_method="vectorized"``, where the returned
        state batches every field except ``rng_key``.
        """
        self._vectorized = not is_prng_key(rng_key)
        # Pretraining moves chains that start from the init strategy, never user init_params.
        pretrain_steps = self._pretrain_steps if init_params is None else 0
        num_chains = rng_key.shape[0] if self._vectorized else None
        model_kwargs = dict(model_kwargs or {})
        first_key = rng_key[0] if self._vectorized else rng_key
        if self._model is not None:
            if model_views.SUBSAMPLE_KWARG in model_kwargs:
                raise ValueError(f"{model_views.SUBSAMPLE_KWARG!r} is a reserved keyword of SMILE.")
            model_views.check_finite_data(model_args, model_kwargs)
            self._plates = model_views.inspect_model(self._model, model_args, model_kwargs)
            init_keys = rng_key if (self._vectorized and init_params is None) else first_key
            model_info = model_views.initialize_subsampled_model(
                init_keys,
                self._model,
                self._plates,
                self._init_strategy,
                model_args,
                model_kwargs,
                shapes_only=init_params is not None,
            )
            self._potential_fn_gen = model_info.potential_fn
            self._postprocess_fn_gen = model_info.postprocess_fn
            expected = model_info.param_info.z
            if init_params is None:
                init_params = expected
            else:
                check_init_params(init_params, expected, num_chains)
        elif init_params is None:
            raise ValueError("SMILE(potential_fn=...) needs init_params in mcmc.run(...).")

        single = jax.tree.map(lambda a: a[0], init_params) if self._vectorized else init_params
        flat, self._unravel = ravel_pytree(single)
        dim = flat.shape[0]
        if dim < 2:
            raise ValueError(
                "MCLMC needs at least 2 latent dimensions (the velocity lives on the sphere "
                f"S^(d-1)); this model has d = {dim}."
            )
        config = self._step_config(num_warmup, dim)
        init_chain = partial(
            self._init_chain, config, model_args, model_kwargs, dim, flat.dtype, pretrain_steps
        )
        key_state, key_chains = jax.random.split(first_key)
        if self._vectorized:
            init_chain = jax.vmap(init_chain)
            key_chains = jax.random.split(key_chains, num_chains)
        # One compiled call (eager vmap would dispatch and compile every primitive separately).
        state = jax.jit(init_chain)(init_params, key_chains)
        state = state._replace(rng_key=key_state)

        init_shapes = _argument_shapes(model_args, model_kwargs)

        def sample_fn(state, model_args, model_kwargs):
            _check_same_shapes(init_shapes, _argument_shapes(model_args, model_kwargs))
            logdensity_fn = self._logdensity_fn(model_args, model_kwargs)
            terms_fn = self._logdensity_terms_fn(model_args, model_kwargs)
            return _transition(config, logdensity_fn, self._unravel, state, num_chains, terms_fn)

        self._sample_fn = sample_fn
        return state

    def sample(self, state: SMILEState, model_args: tuple, model_kwargs: dict) -> SMILEState:
        """One transition of every chain in ``state`` (see :class:`SMILEState`)."""
        assert self._sample_fn is not None, "`init` must be called before `sample`."
        return self._sample_fn(state, model_args, model_kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sample_fn"] = None
        state["_potential_fn_gen"] = None
        state["_postprocess_fn_gen"] = None
        return state

    # ---------------------------------------------------------------- internals

    def _step_config(self, num_warmup: int, dim: int) -> _StepConfig:
        mclmc = None
        if not self._plates and self._adapt and num_warmup > 0:
            mclmc = tuning.mclmc_tuner_config(
                num_warmup,
                dim,
                energy_var_start=self._desired_energy_var[0],
                energy_var_end=self._desired_energy_var[1],
                tune_L=self._L is None,
            )
        return _StepConfig(
            num_warmup=int(num_warmup),
            plates=tuple(self._plates.items()),
            batch_schedule=self._batch_schedule,
            coefficients=dynamics.INTEGRATORS[self._integrator],
            refresh=not (self._plates and self._L is None),
            adapt=self._adapt,
            adapt_during_sampling=self._adapt_during_sampling,
            precondition=self.preconditioned,
            max_noise_angle=self._max_noise_angle,
            energy=self._energy_config,
            mclmc=mclmc,
        )

    def _pretrain(self, config, logdensity_fn, position, batches, rng_key, num_steps):
        """Adam on the (mini-batch) potential: move a chain from its init point to a mode.

        MCLMC moves one step size per step, and with mini-batches the gradient noise keeps
        steps small, so a chain started far from the posterior crawls; the MILE/SMILE recipe
        starts from optimised points instead. Used only when ``init_params`` is not given.
        """
        optimizer = optax.adam(self._pretrain_learning_rate)

        def step(carry, key):
            x, opt_state, batches = carry
            batches, indices = batching.schedules_next(config.plates, batches, key)
            grad = -_value_and_grad(config, logdensity_fn, indices)(x)[1]
            updates, opt_state = optimizer.update(jnp.nan_to_num(grad), opt_state)
            return (optax.apply_updates(x, updates), opt_state, batches), None

        init = (position, optimizer.init(position), batches)
        (position, _, batches), _ = jax.lax.scan(step, init, jax.random.split(rng_key, num_steps))
        return position, batches

    def _prior_curvature(self, model_args, model_kwargs, position, rng_key) -> jax.Array:
        """``(d,)`` diagonal of the log prior's negative Hessian at ``position`` (0 without a
        model), by Hutchinson probes: exact for priors that factorise over coordinates."""
        if self._model is None:
            return jnp.zeros_like(position)
        prior = model_views.prior_only_model(partial(model_views.subsample_model, self._model))
        indices = {name: jnp.arange(1) for name in self._plates}
        kwargs = self._with_indices(model_kwargs, indices)

        def prior_potential(x):
            return potential_energy(prior, model_args, kwargs, self._unravel(x))

        probes = jax.random.rademacher(rng_key, (NUM_NOISE_PROBES, *position.shape), position.dtype)
        hessian_probes = jax.vmap(
            lambda v: jax.jvp(jax.grad(prior_potential), (position,), (v,))[1]
        )(probes)
        return jnp.abs(jnp.mean(probes * hessian_probes, axis=0))

    def _initial_gradient_noise(self, config, logdensity_fn, position, rng_key, prior_curvature):
        """Gradient mean and std over a few random mini-batches at the initial point.

        Starts the noise statistics (preconditioner and step-size cap) at a real estimate
        instead of the reference code's all-ones, at the cost of a few gradient evaluations.
        The prior's curvature, in noise units (N / B times it), is the preconditioner's floor.
        """
        keys = jax.random.split(rng_key, len(config.plates))
        indices = {
            name: jax.random.randint(
                key, (NUM_NOISE_PROBES, plate.subsample_size), 0, plate.size, jnp.int32
            )
            for key, (name, plate) in zip(keys, config.plates)
        }
        grads = jax.vmap(lambda idx: _value_and_grad(config, logdensity_fn, idx)(position)[1])(
            indices
        )
        std = jnp.sqrt(jnp.maximum(jnp.var(grads, axis=0), 1e-7))
        plate = config.plates[0][1]
        floor = prior_curvature * (plate.size / plate.subsample_size)
        return tuning.GradientNoiseState(grads.mean(axis=0), std, floor)

    def _init_chain(
        self, config, model_args, model_kwargs, dim, dtype, pretrain_steps, z, rng_key
    ) -> SMILEState:
        key_batch, key_momentum, key_tuner, key_noise, key_pretrain = jax.random.split(rng_key, 5)
        position, _ = ravel_pytree(z)
        batches = batching.schedules_init(config.plates, key_batch, config.batch_schedule)
        logdensity_fn = self._logdensity_fn(model_args, model_kwargs)
        if pretrain_steps:
            position, batches = self._pretrain(
                config, logdensity_fn, position, batches, key_pretrain, pretrain_steps
            )
            z = self._unravel(position)
        batches, indices = batching.schedules_next(config.plates, batches, key_batch)
        logdensity, grad = _value_and_grad(config, logdensity_fn, indices)(position)
        if config.plates:
            key_noise, key_curvature = jax.random.split(key_noise)
            curvature = self._prior_curvature(model_args, model_kwargs, position, key_curvature)
            grad_noise = self._initial_gradient_noise(
                config, logdensity_fn, position, key_noise, curvature
            )
            limit = tuning.noise_limited_step_size(
                grad_noise, _preconditioner(config, grad_noise, position), config.max_noise_angle
            )
            step_size = self._step_size or jnp.minimum(limit, STEP_SIZE_MINIBATCH_MAX)
            factor = jnp.minimum(step_size / limit, 1.0)
            L = self._L or math.inf
        else:
            grad_noise = None
            if config.precondition:  # the floor is the prior's curvature (E[g^2] = curvature)
                key_noise, key_curvature = jax.random.split(key_noise)
                curvature = self._prior_curvature(model_args, model_kwargs, position, key_curvature)
                grad_noise = tuning.gradient_noise_init(dim, dtype)._replace(floor=curvature)
            step_size = self._step_size or DEFAULT_STEP_SIZE_FULL_BATCH
            factor = 1.0
            L = self._L or (max(math.sqrt(dim), 15.0) if config.mclmc else math.sqrt(dim))
        momentum = dynamics.random_unit_vector(key_momentum, dim, dtype)
        return SMILEState(
            i=jnp.zeros((), jnp.int32),
            z=z,
            potential_energy=-logdensity,
            energy_change=jnp.zeros((), dtype),
            step_size=jnp.asarray(step_size, dtype),
            step_size_factor=jnp.asarray(factor, dtype),
            L=jnp.asarray(L, dtype),
            diverging=jnp.zeros((), bool),
            num_resets=jnp.zeros((), jnp.int32),
            momentum=momentum,
            logdensity_grad=grad,
            energy_tuner=tuning.energy_tuner_init(dtype) if config.plates else None,
            mclmc_tuner=(
                tuning.mclmc_tuner_init(config.mclmc, dim, key_tuner, dtype)
                if config.mclmc
                else None
            ),
            grad_noise=grad_noise,
            batches=batches,
            rng_key=rng_key,
        )


def _argument_shapes(model_args: tuple, model_kwargs: dict) -> dict[str, tuple[int, ...]]:
    """``{"model_args[1]": (N,), "model_kwargs['X']": (N, p), ...}`` for every array argument."""
    shapes = {}
    leaves = jax.tree_util.tree_leaves_with_path((tuple(model_args), dict(model_kwargs)))
    for path, leaf in leaves:
        if hasattr(leaf, "shape"):
            group = ("model_args", "model_kwargs")[path[0].idx]
            shapes[group + jax.tree_util.keystr(path[1:])] = tuple(leaf.shape)
    return shapes


def _check_same_shapes(at_init: dict, now: dict) -> None:
    """The chain state (batch schedules, preconditioner, tuned step size) belongs to the data it
    was initialised and warmed up on: refuse to continue on data of another shape."""
    if now == at_init:
        return
    changed = sorted(set(at_init) ^ set(now)) + [
        f"{name}: {at_init[name]} -> {now[name]}"
        for name in at_init
        if name in now and at_init[name] != now[name]
    ]
    raise ValueError(
        "The model arguments changed shape since the chains were initialised (e.g. between "
        f"mcmc.warmup(...) and mcmc.run(...)): {', '.join(changed)}. The chain state (batch "
        "schedule, preconditioner, tuned step size) belongs to the data it was warmed up on. "
        "Pass the same data, or start afresh on the new data (a new MCMC object, or "
        "mcmc.post_warmup_state = None before mcmc.run)."
    )


def check_init_params(init_params: Any, expected: dict, num_chains: int | None) -> None:
    """Clear errors for ``init_params`` with the wrong sites or shapes.

    ``expected`` holds one chain's values (or shapes); with ``num_chains`` every value must
    carry a leading ``(num_chains,)`` axis.
    """
    if not isinstance(init_params, dict) or set(init_params) != set(expected):
        got = sorted(init_params) if isinstance(init_params, dict) else type(init_params).__name__
        lead = "" if num_chains is None else ", each with a leading (num_chains,) axis"
        raise ValueError(
            f"init_params must be a dict of unconstrained values for the latent sites "
            f"{sorted(expected)}{lead}; got {got}."
        )
    for name, value in init_params.items():
        want = tuple(jnp.shape(expected[name]))
        if num_chains is not None:
            want = (num_chains, *want)
        if tuple(jnp.shape(value)) != want:
            lead = "" if num_chains is None else f"(num_chains,) + {want[1:]} = "
            raise ValueError(
                f"init_params[{name!r}] has shape {jnp.shape(value)}, expected {lead}{want}."
            )
