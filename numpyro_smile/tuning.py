"""Step-size, trajectory-length and preconditioner adaptation, as pure ``init``/``update`` pairs.

Three adapters, each a NamedTuple state plus pure functions (optax style), unit-testable alone:

* :func:`energy_tuner_init` / :func:`energy_tuner_update`: SMILE's energy-error step-size
  controller with the reset guardrail (docs: "Guardrails"). A Gamma distribution is moment-fitted
  to recent |dE|; an atypically large |dE| shrinks the step size, an atypically small one grows
  it, and a |dE| beyond the ``reset_quantile`` rejects the step. Relative: no absolute target.
  One deliberate deviation: the two adaptation tails are equal by default (``shrink_share``).
* :func:`gradient_noise_init` / :func:`gradient_noise_update` / :func:`gradient_noise_scale`:
  pSMILE's diagonal preconditioner from an EMA of the per-coordinate gradient mean and standard
  deviation (docs: "Mini-batch noise"). It makes mini-batch gradient noise isotropic.
* :func:`mclmc_tuner_init` / :func:`mclmc_tuner_update`: full-batch MCLMC tuning with MILE's
  changes (docs: "MCLMC in one page"): step size from the energy variance with a 0.5 -> 0.1 schedule
  (phases I+II), L from posterior variances (end of phase II), L from the effective sample size
  of a stored trace (phase III).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special

__all__ = [
    "ACCURATE_ENERGY_VAR",
    "MILE_ENERGY_VAR",
    "EnergyTunerConfig",
    "EnergyTunerState",
    "EnergyVarianceState",
    "GradientNoiseState",
    "MCLMCTunerConfig",
    "MCLMCTunerState",
    "effective_sample_size",
    "energy_tuner_init",
    "energy_tuner_update",
    "energy_variance_init",
    "energy_variance_update",
    "gradient_noise_init",
    "gradient_noise_scale",
    "gradient_noise_update",
    "mclmc_tuner_L_from_trace",
    "mclmc_tuner_config",
    "mclmc_tuner_init",
    "mclmc_tuner_is_last_phase3_step",
    "mclmc_tuner_update",
    "noise_limited_step_size",
]

Array = jax.Array

#: Step-size bounds of the SMILE controller (SMILE's numerical guardrails).
STEP_SIZE_MIN, STEP_SIZE_MAX = 1e-8, 10.0


def _normal_quantile(q: float) -> float:
    """Phi^{-1}(q), with the limits q = 0 -> -inf and q = 1 -> +inf."""
    if q <= 0.0:
        return -math.inf
    if q >= 1.0:
        return math.inf
    return NormalDist().inv_cdf(q)


# --------------------------------------------------------------------------------------------
# SMILE energy-error tuner and reset guardrail
# --------------------------------------------------------------------------------------------


class EnergyTunerConfig(NamedTuple):
    """Hyper-parameters of the SMILE energy-error tuner (static Python floats).

    Attributes:
        reset_quantile: rho; a step whose |dE| exceeds the rho-quantile of the fitted Gamma is
            rejected (position kept; the kernel then draws a fresh uniform velocity, where the
            reference code zeroes it). 1.0 disables resets.
        adapt_tail_prob: a; the total probability of the two adaptation tails: |dE| in the
            upper tail shrinks the step size, in the lower tail grows it (the split is
            ``shrink_share``; the paper's 2/3 gives the (1 - 2a/3)- and (a/3)-quantiles).
            0.0 disables adaptation.
        adapt_rate: delta; relative step-size change per adapting step.
        shrink_share: share of the tail probability a spent on the upper tail: |dE| above the
            (1 - shrink_share * a)-quantile shrinks the step, below the
            ((1 - shrink_share) * a)-quantile grows it. The reference code uses 2/3, which
            drifts log(step) down by a * delta / 3 per step whenever |dE| is stationary (as it
            is when mini-batch noise dominates it); we default to 1/2, which is neutral.
        smoothing: beta; EMA rate of the running mean and std of |dE|.
        burn_in: no resets and no step-size change while the step counter is below this.
    """

    reset_quantile: float = 0.98
    adapt_tail_prob: float = 0.1
    adapt_rate: float = 0.02
    smoothing: float = 0.01
    burn_in: int = 10
    shrink_share: float = 0.5


class EnergyTunerState(NamedTuple):
    """Running statistics of |dE| for one chain.

    Attributes:
        abs_mean: EMA mean m_E of |dE|, scalar.
        abs_std: EMA standard deviation s_E of |dE|, scalar.
        count: step counter t, starting at 1 (int32 scalar).
    """

    abs_mean: Array
    abs_std: Array
    # The field shadows tuple.count (the name is part of the state and of checkpoints).
    count: Array  # type: ignore[assignment]


def energy_tuner_init(dtype=jnp.float32) -> EnergyTunerState:
    """Fresh statistics; the first steps overwrite them (as in SMILE's reference code)."""
    one = jnp.ones((), dtype=dtype)
    return EnergyTunerState(abs_mean=one, abs_std=one, count=jnp.ones((), jnp.int32))


#: Upper quantiles from this level up are floored at the mean (see :func:`_gamma_quantile`).
UPPER_QUANTILE_FLOOR_FROM = 0.9


def _gamma_quantile(mean: Array, std: Array, q: float) -> Array:
    """q-quantile of the Gamma with the given mean and std (moment fit).

    Wilson-Hilferty, as in the reference code; for lower quantiles it is floored by the
    small-x asymptote theta * (q * Gamma(k + 1))^(1/k), which is accurate where
    Wilson-Hilferty fails: at shape k < ~0.5 (heavy-tailed |dE|) it goes to zero or below,
    and the step size could then only shrink. For k = 0.5 and q = 0.05 the exact quantile is
    0.00197 theta, the asymptote 0.00196 theta, Wilson-Hilferty 4e-9 theta.

    Upper quantiles (q >= 0.9: the reset and shrink thresholds) are floored at the mean. The
    exact ones lie above it for every shape k >= 0.02, but Wilson-Hilferty turns negative below
    k = 0.018 (q = 0.98), and such shapes occur when rare, huge errors dominate the running
    moments: one gross outlier in the data (a Gaussian likelihood, y off by 100 sd, B = 64 of
    N = 10,000) makes |dE| jump whenever it enters or leaves the batch. Unfloored, every step
    was then rejected and the step size shrank to 1e-12 (chains frozen at their start);
    floored, only those jumps are rejected. Wilson-Hilferty itself lies above the mean for
    k > 0.026 (q = 0.98) and k > 0.041 (q = 0.95), so there nothing changes.
    """
    z = _normal_quantile(q)
    if math.isinf(z):
        return jnp.full_like(mean, z)
    variance = std**2 + 1e-6
    shape = mean**2 / variance
    scale = variance / mean
    wilson_hilferty = shape * scale * (1 - 1 / (9 * shape) + z / (3 * jnp.sqrt(shape))) ** 3
    if q >= UPPER_QUANTILE_FLOOR_FROM:
        return jnp.maximum(wilson_hilferty, mean)
    if q >= 0.5:
        return wilson_hilferty
    log_tail = jnp.log(scale) + (math.log(q) + jax.scipy.special.gammaln(shape + 1)) / shape
    return jnp.maximum(wilson_hilferty, jnp.exp(log_tail))


def energy_tuner_update(
    state: EnergyTunerState,
    step_size: Array,
    energy_change: Array,
    adapt: Array | bool = True,
    config: EnergyTunerConfig = EnergyTunerConfig(),
) -> tuple[EnergyTunerState, Array, Array]:
    """Update the |dE| statistics, decide on a reset, and adapt the step size.

    Thresholds come from the statistics *before* this step. A non-finite ``energy_change``
    always resets, leaves the statistics untouched and (when adapting) shrinks the step size by
    20 percent: our extension of the reference rule, which cannot see NaNs.

    Args:
        state: current statistics.
        step_size: step size used for this step.
        energy_change: dE of this step (any finite or non-finite scalar).
        adapt: whether the step size may change (False during sampling when frozen).
        config: :class:`EnergyTunerConfig`.

    Returns:
        ``(new_state, new_step_size, reset)``, ``reset`` a boolean scalar.
    """
    beta = config.smoothing
    t = state.count
    finite = jnp.isfinite(energy_change)
    error = jnp.where(finite, jnp.abs(energy_change), 0.0)

    reset_threshold = _gamma_quantile(state.abs_mean, state.abs_std, config.reset_quantile)
    upper = _gamma_quantile(
        state.abs_mean, state.abs_std, 1 - config.shrink_share * config.adapt_tail_prob
    )
    lower = _gamma_quantile(
        state.abs_mean, state.abs_std, (1 - config.shrink_share) * config.adapt_tail_prob
    )
    past_burn_in = t >= config.burn_in
    reset = ((error > reset_threshold) & past_burn_in) | ~finite

    mean = jnp.where(t < 3, error, (1 - beta) * state.abs_mean + beta * error)
    mean = jnp.clip(mean, 1e-6, 1e6)
    variance = (1 - beta) * state.abs_std**2 * (t != 1) + beta * (error - mean) ** 2
    correction = jnp.where(t < 5, 1.0, 1 - 0.5 ** (t - 4).astype(mean.dtype))
    std = jnp.clip(jnp.sqrt(variance / correction), 1e-6, 1e7)
    mean = jnp.where(finite, mean, state.abs_mean)
    std = jnp.where(finite, std, state.abs_std)

    factor = jnp.where(error > upper, 1 - config.adapt_rate, 1.0)
    factor = jnp.where(error < lower, 1 + config.adapt_rate, factor)
    factor = jnp.where(finite, factor, 0.8)
    adapting = jnp.logical_and(adapt, past_burn_in | ~finite)
    new_step_size = jnp.where(
        adapting, jnp.clip(step_size * factor, STEP_SIZE_MIN, STEP_SIZE_MAX), step_size
    )
    return EnergyTunerState(mean, std, t + 1), new_step_size, reset


# --------------------------------------------------------------------------------------------
# pSMILE gradient-noise preconditioner
# --------------------------------------------------------------------------------------------


class GradientNoiseState(NamedTuple):
    """EMA of the raw gradient, per coordinate, and the prior's floor on its variance.

    Attributes:
        mean, std: ``(d,)`` EMAs of the raw mini-batch gradient (initialised to ones).
        floor: ``(d,)`` variance added to ``std**2`` in the preconditioner: the prior's
            curvature in gradient-noise units, (N / B) * diag(-Hessian of log prior). The noise
            variance is about (N / B) times the likelihood's curvature, so std**2 + floor is
            (N / B) times the posterior's curvature, never less than the prior's. Without it a
            parameter the likelihood ignores (a dead ReLU unit's weights: no gradient noise)
            gets an unbounded scale (measured: 2e5 on an airfoil MLP, where chains then left
            the posterior). Zeros switch it off.
    """

    mean: Array
    std: Array
    floor: Array


def gradient_noise_init(dim: int, dtype=jnp.float32) -> GradientNoiseState:
    """Initial statistics (mean = std = 1, as in the reference code; no floor)."""
    return GradientNoiseState(
        jnp.ones((dim,), dtype), jnp.ones((dim,), dtype), jnp.zeros((dim,), dtype)
    )


def gradient_noise_update(
    state: GradientNoiseState, grad: Array, rate: float = 0.01
) -> GradientNoiseState:
    """Fold one raw ``(d,)`` gradient into the EMAs (mean first; the variance uses the new mean)."""
    mean = jnp.clip((1 - rate) * state.mean + rate * grad, -1e6, 1e6)
    variance = jnp.maximum((1 - rate) * state.std**2 + rate * (grad - mean) ** 2, 1e-7)
    return GradientNoiseState(mean, jnp.sqrt(variance), state.floor)


def gradient_noise_scale(state: GradientNoiseState) -> Array:
    """The diagonal preconditioner s, shape ``(d,)``: s_i proportional to 1 / sigma_i.

    sigma = sqrt(std**2 + floor) is clipped to [1e-2, 1e4] and normalised to unit RMS, so the
    noise of the transformed gradient s * g has the same standard deviation r = RMS(sigma) on
    every coordinate and the total noise power is preserved.
    """
    sigma = jnp.clip(jnp.sqrt(state.std**2 + state.floor), 1e-2, 1e4)
    rms = jnp.sqrt(jnp.mean(sigma**2))
    return rms / sigma


def noise_limited_step_size(
    state: GradientNoiseState, scale: Array | float, max_angle: float
) -> Array:
    """Largest step size whose gradient noise turns the velocity by about ``max_angle`` rad.

    In the isokinetic velocity update a gradient g turns u by about
    delta = step_size * |s * g| / (d - 1) radians. Mini-batch noise of std sigma_i per
    coordinate contributes |s * sigma|, and SG-MCLMC's bias grows with that turn (measured on
    a Bayesian linear regression: variances ~5 percent low at 0.15 rad, ~25 percent at 0.6).
    Returns max_angle * (d - 1) / |s * sigma|, a scalar.

    sigma is floored at 1e-2 but not capped: the noise grows like N / sqrt(B), and the
    preconditioner's cap of 1e4 (:func:`gradient_noise_scale`) would understate it at large N
    (N = 1e6, B = 1024: sigma ~ 3e4, a 3x too large step, ~0.6 rad per step, posterior sd 28
    percent low on a linear regression). The gradient clip bounds sigma anyway.
    """
    sigma = jnp.maximum(state.std, 1e-2)
    dim = sigma.shape[0]
    return max_angle * (dim - 1) / jnp.linalg.norm(scale * sigma)


# --------------------------------------------------------------------------------------------
# Energy-variance step size (MCLMC's rule; used by the full-batch tuner and SMILE's burn-in)
# --------------------------------------------------------------------------------------------


class EnergyVarianceState(NamedTuple):
    """Discounted statistics of MCLMC's step-size rule Var[dE] / d = C eps^6.

    Attributes:
        log_weighted_xi: log of the discounted, weighted sum of xi / eps^6 (log domain: no
            overflow for tiny step sizes in float32).
        weight_sum: discounted sum of the weights.
        step_size_max: cap, lowered to 0.8 eps after a non-finite step.
    """

    log_weighted_xi: Array
    weight_sum: Array
    step_size_max: Array


def energy_variance_init(dtype=jnp.float32) -> EnergyVarianceState:
    return EnergyVarianceState(
        jnp.full((), -jnp.inf, dtype), jnp.zeros((), dtype), jnp.full((), jnp.inf, dtype)
    )


def energy_variance_update(
    state: EnergyVarianceState,
    step_size: Array,
    energy_change: Array,
    finite: Array,
    dim: int,
    desired_energy_var: Array | float,
    num_effective_samples: float = 100.0,
    trust_in_estimate: float = 1.5,
) -> tuple[EnergyVarianceState, Array]:
    """One step of the rule: each dE gives xi / eps^6 ~ C; eps* = (weighted mean)^(-1/6).

    xi = dE^2 / (d V*) + 1e-8 is weighted by exp(-(log xi / (6 trust))^2 / 2), so steps far
    from the target count less; the sums decay with (n_eff - 1) / (n_eff + 1). A non-finite
    step counts as dE = 0 and caps the step size at 0.8 eps (as BlackJAX's tuner does).

    Returns:
        ``(new_state, new_step_size)``.
    """
    step_size_max = jnp.where(finite, state.step_size_max, 0.8 * step_size)
    energy_change = jnp.where(finite, energy_change, 0.0)
    xi = energy_change**2 / (dim * desired_energy_var) + 1e-8
    weight = jnp.exp(-0.5 * (jnp.log(xi) / (6.0 * trust_in_estimate)) ** 2)
    decay = (num_effective_samples - 1) / (num_effective_samples + 1)
    log_weighted_xi = jnp.logaddexp(
        jnp.log(decay) + state.log_weighted_xi,
        jnp.log(weight) + jnp.log(xi) - 6 * jnp.log(step_size),
    )
    weight_sum = decay * state.weight_sum + weight
    new_step_size = jnp.exp(-(log_weighted_xi - jnp.log(weight_sum)) / 6)
    new_step_size = jnp.minimum(new_step_size, step_size_max).astype(step_size.dtype)
    return EnergyVarianceState(log_weighted_xi, weight_sum, step_size_max), new_step_size


# --------------------------------------------------------------------------------------------
# Full-batch MCLMC tuner with MILE's schedule
# --------------------------------------------------------------------------------------------

#: Desired Var[dE] per dimension for accurate moments: BlackJAX's default. ``SMILE``'s
#: full-batch default, so that ``MCMC(SMILE(model))`` meets NUTS's moments: on Haario's banana
#: MILE's schedule below left Var[x2] at 18-37 percent of the truth (step size ~1.5), this one
#: within Monte Carlo error (step size ~0.5; tests/test_stress.py).
ACCURATE_ENERGY_VAR = 5e-4

#: MILE's schedule of the desired Var[dE] per dimension, (start, end): at its end 200x
#: BlackJAX's target, so steps about 2.4x larger (Var[dE] grows as step^6), for fast
#: predictive mixing of neural networks at a bias in the moments. ``SMILEEnsemble(full_batch=
#: True)`` uses it (the papers' recipe); ``SMILE(desired_energy_var=MILE_ENERGY_VAR)`` too.
MILE_ENERGY_VAR = (0.5, 0.1)


class MCLMCTunerConfig(NamedTuple):
    """Static schedule of the full-batch tuner (build with :func:`mclmc_tuner_config`).

    Attributes:
        num_phase1, num_phase2, num_phase3: warmup steps per phase (80 / 10 / 10 percent).
        energy_var_start, energy_var_end: desired Var[dE] per dimension, scheduled linearly
            (exponentially when the start exceeds 2) over phases I+II.
        num_effective_samples: n_eff of the step-size averaging (forgetting factor).
        trust_in_estimate: width of the log-weight window around the target.
        tune_L: whether L is set from posterior variances and from the ESS.
        trace_stride: keep every ``trace_stride``-th phase-III position for the ESS.
        trace_length: number of stored positions (``ceil(num_phase3 / trace_stride)``).
        trace_dims: number of coordinates stored (at most 2000, as in MILE).
    """

    num_phase1: int
    num_phase2: int
    num_phase3: int
    energy_var_start: float = MILE_ENERGY_VAR[0]
    energy_var_end: float = MILE_ENERGY_VAR[1]
    num_effective_samples: float = 100.0
    trust_in_estimate: float = 1.5
    tune_L: bool = True
    trace_stride: int = 1
    trace_length: int = 0
    trace_dims: int = 0


def mclmc_tuner_config(
    num_warmup: int,
    dim: int,
    *,
    energy_var_start: float = MILE_ENERGY_VAR[0],
    energy_var_end: float = MILE_ENERGY_VAR[1],
    num_effective_samples: float = 100.0,
    trust_in_estimate: float = 1.5,
    tune_L: bool = True,
    phase_fractions: tuple[float, float] = (0.8, 0.1),
    max_trace_length: int = 1000,
    max_trace_dims: int = 2000,
) -> MCLMCTunerConfig:
    """Split ``num_warmup`` into MILE's phases and size the phase-III trace buffer."""
    num_phase1 = int(phase_fractions[0] * num_warmup)
    num_phase2 = int(phase_fractions[1] * num_warmup)
    num_phase3 = num_warmup - num_phase1 - num_phase2
    if not tune_L:
        num_phase3 = 0
    stride = max(1, math.ceil(num_phase3 / max_trace_length)) if num_phase3 else 1
    return MCLMCTunerConfig(
        num_phase1=num_phase1,
        num_phase2=num_phase2,
        num_phase3=num_phase3,
        energy_var_start=energy_var_start,
        energy_var_end=energy_var_end,
        num_effective_samples=num_effective_samples,
        trust_in_estimate=trust_in_estimate,
        tune_L=tune_L,
        trace_stride=stride,
        trace_length=math.ceil(num_phase3 / stride) if num_phase3 else 0,
        trace_dims=min(dim, max_trace_dims),
    )


class MCLMCTunerState(NamedTuple):
    """Statistics of the full-batch tuner for one chain.

    Attributes:
        count: warmup steps seen (int32).
        energy: statistics of the energy-variance step-size rule.
        moment_weight, moment_x, moment_x2: step-size-weighted sums of z and z^2 over phase II,
            ``()``, ``(d,)``, ``(d,)``; z are the preconditioned coordinates x / s.
        trace: ``(trace_length, trace_dims)`` phase-III positions for the ESS.
        trace_coords: ``(trace_dims,)`` coordinates kept in the trace (random subset if d > 2000).
    """

    count: Array  # type: ignore[assignment]  # shadows tuple.count, as above
    energy: EnergyVarianceState
    moment_weight: Array
    moment_x: Array
    moment_x2: Array
    trace: Array
    trace_coords: Array


def mclmc_tuner_init(
    config: MCLMCTunerConfig, dim: int, rng_key: Array, dtype=jnp.float32
) -> MCLMCTunerState:
    """Empty statistics; ``rng_key`` picks the stored coordinates when d > ``trace_dims``."""
    coords = jax.random.permutation(rng_key, dim)[: config.trace_dims]
    zero = jnp.zeros((), dtype)
    return MCLMCTunerState(
        count=jnp.zeros((), jnp.int32),
        energy=energy_variance_init(dtype),
        moment_weight=zero,
        moment_x=jnp.zeros((dim,), dtype),
        moment_x2=jnp.zeros((dim,), dtype),
        trace=jnp.zeros((config.trace_length, config.trace_dims), dtype),
        trace_coords=jnp.sort(coords),
    )


def _desired_energy_var(config: MCLMCTunerConfig, t: Array) -> Array:
    span = config.num_phase1 + config.num_phase2 + 1
    start, end = config.energy_var_start, config.energy_var_end
    if start > 2:
        decay = jnp.exp(-t / (span / 4))
        return start * decay + end * (1 - decay)
    return start - (start - end) * jnp.minimum(t / span, 1.0)


def effective_sample_size(samples: Array) -> Array:
    """Single-chain ESS per coordinate of ``(n, k)`` draws (Geyer's initial monotone sequence).

    Autocovariances by FFT; pair sums are truncated at the first non-positive one and made
    monotone. Returns ``(k,)`` values in (0, n * log10(n)].
    """
    n = samples.shape[0]
    centred = samples - samples.mean(axis=0)
    spectrum = jnp.fft.rfft(centred, n=2 * n, axis=0)
    autocov = jnp.fft.irfft(spectrum * jnp.conj(spectrum), n=2 * n, axis=0)[:n] / n
    rho = autocov / jnp.maximum(autocov[:1], 1e-30)
    num_pairs = n // 2
    pairs = rho[0 : 2 * num_pairs : 2] + rho[1 : 2 * num_pairs : 2]
    positive = jnp.cumprod(pairs > 0, axis=0).astype(pairs.dtype)
    monotone = jax.lax.cummin(jnp.where(positive > 0, pairs, jnp.inf), axis=0) * positive
    monotone = jnp.where(positive > 0, monotone, 0.0)
    tau = -1.0 + 2.0 * monotone.sum(axis=0)
    tau = jnp.maximum(tau, 1.0 / jnp.log10(jnp.maximum(n, 10)))
    return n / tau


def mclmc_tuner_update(
    state: MCLMCTunerState,
    config: MCLMCTunerConfig,
    step_size: Array,
    L: Array,
    energy_change: Array,
    position: Array,
    finite: Array,
) -> tuple[MCLMCTunerState, Array, Array]:
    """One warmup step of the full-batch tuner.

    Args:
        state: tuner statistics.
        config: static schedule.
        step_size: step size used for this step.
        L: decoherence length used for this step.
        energy_change: dE of the step (ignored when ``finite`` is False).
        position: ``(d,)`` accepted position in preconditioned coordinates z = x / s.
        finite: whether the proposed step was finite (else the step was reverted).

    Returns:
        ``(new_state, new_step_size, new_L)``.
    """
    dim = position.shape[0]
    t = state.count
    dtype = state.moment_weight.dtype
    in_step_phase = t < config.num_phase1 + config.num_phase2
    in_phase2 = (t >= config.num_phase1) & in_step_phase

    # Phases I+II: step size from the energy error (xi ~ C eps^6).
    energy, tuned_step = energy_variance_update(
        state.energy,
        step_size,
        energy_change,
        finite,
        dim,
        _desired_energy_var(config, t.astype(dtype)),
        config.num_effective_samples,
        config.trust_in_estimate,
    )
    new_step_size = jnp.where(in_step_phase, tuned_step, step_size)
    energy = jax.tree.map(lambda a, b: jnp.where(in_step_phase, a, b), energy, state.energy)

    # Phase II: step-size-weighted moments of z; L = sqrt(sum of variances) at its end.
    moment_w = jnp.where(in_phase2 & finite, step_size, 0.0)
    moment_weight = state.moment_weight + moment_w
    moment_x = state.moment_x + moment_w * position
    moment_x2 = state.moment_x2 + moment_w * position**2
    new_L = L
    if config.tune_L:
        mean = moment_x / jnp.maximum(moment_weight, 1e-30)
        variance = jnp.maximum(moment_x2 / jnp.maximum(moment_weight, 1e-30) - mean**2, 0.0)
        end_of_phase2 = (t == config.num_phase1 + config.num_phase2 - 1) & (moment_weight > 0)
        new_L = jnp.where(end_of_phase2, jnp.sqrt(jnp.sum(variance)), new_L)

    # Phase III: store a thinned trace (L from its ESS: see mclmc_tuner_L_from_trace).
    trace = state.trace
    if config.num_phase3 > 0:
        offset = t - config.num_phase1 - config.num_phase2
        store = (offset >= 0) & (offset % config.trace_stride == 0)
        slot = jnp.clip(offset // config.trace_stride, 0, config.trace_length - 1)
        row = jnp.where(store, position[state.trace_coords], trace[slot])
        trace = trace.at[slot].set(row)

    new_state = MCLMCTunerState(
        count=t + 1,
        energy=energy,
        moment_weight=moment_weight,
        moment_x=moment_x,
        moment_x2=moment_x2,
        trace=trace,
        trace_coords=state.trace_coords,
    )
    return new_state, new_step_size, new_L


def mclmc_tuner_is_last_phase3_step(config: MCLMCTunerConfig, count: Array) -> Array:
    """True when ``count`` (steps seen before this one) is the last phase-III step."""
    return count == config.num_phase1 + config.num_phase2 + config.num_phase3 - 1


def mclmc_tuner_L_from_trace(
    state: MCLMCTunerState, config: MCLMCTunerConfig, step_size: Array
) -> Array:
    """MILE's phase-III rule: L = 0.4 * step_size * mean_i(num_phase3 / ESS_i).

    Call once, after the last phase-III step (the kernel does it outside ``vmap`` so that the
    FFT runs once per warmup, not on every step).
    """
    # The FFT needs float32 or float64 (a bfloat16 or float16 chain is promoted for it).
    ess = effective_sample_size(
        state.trace.astype(jnp.promote_types(state.trace.dtype, jnp.float32))
    )
    return (0.4 * step_size * jnp.mean(config.num_phase3 / ess)).astype(step_size.dtype)
