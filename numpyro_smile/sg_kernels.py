"""``SGLD``, ``SGHMC``, ``AdaSGHMC``: the stochastic-gradient baselines as NumPyro kernels.

Thin adapters (:class:`~numpyro_smile.kernel.KernelAdapter`, shared with ``SMILE``: the same
plate detection, model checks and errors, batch schedules, ``init_params`` checks, full-data
view for ``az.from_numpyro``) over the core of :mod:`numpyro_smile.sgmcmc`. Each kernel's
settings are its constructor's keywords; the step size is a float or a schedule
(:mod:`numpyro_smile.schedules`, e.g. :func:`~numpyro_smile.cyclical` for cSGLD/cSGHMC).

Example::

    mcmc = MCMC(SGHMC(model, step_size=1e-3), num_warmup=2000, num_samples=2000,
                num_chains=4, chain_method="vectorized")
    mcmc.run(jax.random.key(0), X, y)
    idata = arviz.from_numpyro(mcmc)   # log_likelihood over all N data points

Unlike SMILE these kernels have no tuner: the step size (and SGHMC's momentum decay) must be
chosen, e.g. on held-out data with :func:`~numpyro_smile.select_step_size`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from numpyro_smile import batching, sgmcmc
from numpyro_smile.kernel import DEFAULT_INIT_STRATEGY, KernelAdapter
from numpyro_smile.schedules import CyclicalSchedule, as_schedule
from numpyro_smile.sgmcmc import SGConfig, SGState

__all__ = ["SGHMC", "SGLD", "AdaSGHMC", "SGState", "StochasticGradientKernel"]


class StochasticGradientKernel(KernelAdapter):
    """What SGLD, SGHMC and AdaSGHMC share: an :class:`~numpyro_smile.sgmcmc.SGConfig` and
    the core of :mod:`numpyro_smile.sgmcmc` (see :class:`SGLD` for the common arguments)."""

    name = "SG-MCMC"

    def __init__(
        self,
        model: Callable | None,
        potential_fn: Callable | None,
        config: SGConfig,
        *,
        init_strategy: Callable,
        verbose: bool | None,
        data_size: int | None,
        subsample_size: int | None,
    ) -> None:
        super().__init__(
            model,
            potential_fn,
            init_strategy=init_strategy,
            verbose=verbose,
            data_size=data_size,
            subsample_size=subsample_size,
        )
        if config.batch_schedule not in batching.BATCH_SCHEDULES:
            raise ValueError(
                f"{self.name}: batch_schedule must be one of {batching.BATCH_SCHEDULES}, got "
                f"{config.batch_schedule!r}."
            )
        self.config = config

    @property
    def default_fields(self) -> tuple[str, ...]:  # type: ignore[override]
        """Fields ``MCMC`` collects: ``exploring`` too with a cyclical schedule."""
        fields = ("z", "diverging", "step_size", "potential_energy")
        return fields + (("exploring",) if self.cyclical else ())

    @property
    def cyclical(self) -> bool:
        """Whether the step size is cyclical (keep only the draws with ``exploring`` False)."""
        return isinstance(self.config.schedule, CyclicalSchedule)

    @property
    def mode(self) -> str:
        """The variant in words, e.g. ``"SGHMC, B=256 of N=10000"``."""
        return sgmcmc.SGPlan(self.config, tuple(self._plates.items()), 0, 0).mode

    @property
    def expected_reset_rate(self) -> float:
        """Only non-finite steps are rejected: none by design."""
        return 0.0

    def settings(self) -> dict[str, Any]:
        """The settings as plain values (checkpoints compare them)."""
        values = self.config._asdict()
        schedule = values["schedule"]
        values["schedule"] = None if schedule is None else [type(schedule).__name__, *schedule]
        return values

    def build_core(
        self,
        plates: dict,
        num_warmup: int,
        dim: int,
        num_chains: int | None,
        fixed_start: bool,
        *,
        members: bool = False,
    ) -> sgmcmc.SGKernel:
        """The core of :mod:`numpyro_smile.sgmcmc` for this problem."""
        plan = sgmcmc.make_sg_plan(self.config, plates, num_warmup, dim)
        return sgmcmc.build_sg_kernel(plan, num_chains)


class SGLD(StochasticGradientKernel):
    """Stochastic-gradient Langevin dynamics (Welling and Teh, 2011):
    ``x' = x + epsilon grad log p(x) + sqrt(2 epsilon) xi`` on a fresh mini-batch per step.

    Args:
        model: a NumPyro model; its ``numpyro.plate(name, N, subsample_size=B)`` gives the
            mini-batches (without one, full-data gradients).
        potential_fn: alternatively ``z -> U(z)``, or with ``data_size`` and
            ``subsample_size`` ``(z, batch_indices) -> U_B(z)``; needs ``init_params``.
        step_size: epsilon, a variance per step (units of the parameters squared): a positive
            float, or a schedule (:class:`~numpyro_smile.schedules.PolynomialDecay`,
            :func:`~numpyro_smile.cyclical` for cSGLD). Stable below about 1 / (largest
            curvature of the potential) ~ 1 / N.
        batch_schedule: ``"epoch"`` (a permutation per epoch) or ``"with_replacement"``.
        init_strategy: NumPyro init strategy when ``init_params`` is not given.
        verbose: a status line at ``init`` (``None``: on a terminal only).
        data_size: with ``potential_fn`` only: N, the number of data points.
        subsample_size: with ``potential_fn`` only: B, the mini-batch size.

    Sample statistics: ``step_size``, ``diverging`` (a non-finite step, rejected: the chain
    stays put), ``potential_energy`` (mini-batch estimate), and with a cyclical schedule
    ``exploring`` (draws to drop).
    """

    name = "SGLD"

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        *,
        step_size: Any = None,
        batch_schedule: str = "epoch",
        init_strategy: Callable = DEFAULT_INIT_STRATEGY,
        verbose: bool | None = None,
        data_size: int | None = None,
        subsample_size: int | None = None,
    ) -> None:
        config = SGConfig("SGLD", as_schedule(step_size, self.name), batch_schedule=batch_schedule)
        super().__init__(
            model, potential_fn, config, init_strategy=init_strategy, verbose=verbose,
            data_size=data_size, subsample_size=subsample_size,
        )  # fmt: skip


class SGHMC(StochasticGradientKernel):
    """Stochastic-gradient Hamiltonian Monte Carlo (Chen et al., 2014) with a persistent
    momentum and friction:

    ``x' = x + epsilon p``, ``p' = (1 - alpha) p + epsilon grad log p(x) + sqrt(2 alpha -
    epsilon^2 beta) xi``, one fresh mini-batch per step.

    This is BlackJAX's ``sghmc`` diffusion step (``alpha_blackjax = momentum_decay /
    step_size``, ``beta = noise_estimate``). BlackJAX's ``sghmc`` *kernel* differs: each call
    redraws the momentum and takes 10 steps on one mini-batch; ``num_integration_steps=10,
    refresh_momentum=True`` reproduces it. In Chen et al.'s variables (v = epsilon p) the
    learning rate is epsilon^2 and the momentum decay alpha.

    Args:
        step_size: epsilon, a time step (units of the parameters per unit momentum): a float
            or a schedule (:func:`~numpyro_smile.cyclical` for cSGHMC). Stable below about
            sqrt(alpha) / sqrt(largest curvature) ~ sqrt(alpha / N).
        momentum_decay: alpha in (0, 1], the share of the momentum lost per step (friction
            alpha / epsilon per unit time); larger is more robust, smaller mixes faster.
        noise_estimate: beta >= 0, the gradient-noise variance estimate subtracted from the
            injected noise (0: none, as usual).
        num_integration_steps: steps per mini-batch (and per ``sample`` call).
        refresh_momentum: redraw the momentum at every call (BlackJAX's kernel).

    The other arguments and the sample statistics are :class:`SGLD`'s.
    """

    name = "SGHMC"
    _method = "SGHMC"

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        *,
        step_size: Any = None,
        momentum_decay: float = 0.05,
        noise_estimate: float = 0.0,
        num_integration_steps: int = 1,
        refresh_momentum: bool = False,
        batch_schedule: str = "epoch",
        init_strategy: Callable = DEFAULT_INIT_STRATEGY,
        verbose: bool | None = None,
        data_size: int | None = None,
        subsample_size: int | None = None,
    ) -> None:
        default = step_size is None and self._method == "AdaSGHMC"  # 0.01 / sqrt(N), at init
        schedule = None if default else as_schedule(step_size, self.name)
        _check_sghmc(self.name, momentum_decay, noise_estimate, num_integration_steps)
        if self._method == "AdaSGHMC" and noise_estimate:
            raise ValueError(
                "AdaSGHMC's noise estimate is its adapted gradient moment; noise_estimate is "
                "SGHMC's (leave it at 0)."
            )
        if not isinstance(refresh_momentum, (bool, np.bool_)):
            raise TypeError(f"refresh_momentum must be True or False, got {refresh_momentum!r}.")
        config = SGConfig(
            self._method,
            schedule,
            float(momentum_decay),
            float(noise_estimate),
            int(num_integration_steps),
            bool(refresh_momentum),
            batch_schedule,
        )
        super().__init__(
            model, potential_fn, config, init_strategy=init_strategy, verbose=verbose,
            data_size=data_size, subsample_size=subsample_size,
        )  # fmt: skip


class AdaSGHMC(SGHMC):
    """Scale-adapted SGHMC (Springenberg et al., 2016): SGHMC with the diagonal mass
    V^(1/2), V the running second moment of the gradient, adapted during warmup and frozen
    after (see :mod:`numpyro_smile.sgmcmc`). The gradient's scale no longer sets the step
    size, so one learning rate serves many models.

    Args:
        step_size: epsilon; ``None``: 0.01 / sqrt(N) (Springenberg et al.'s learning rate
            1e-2, N the data size of the subsample plate). A float or a schedule.
        momentum_decay: alpha, the share of momentum lost per step (default 0.05).

    The noise estimate is the adapted V itself (the paper's choice): ``noise_estimate`` must
    stay 0. The other arguments are :class:`SGHMC`'s. Warmup must be long enough for V to
    settle (a few hundred steps).
    """

    name = "AdaSGHMC"
    _method = "AdaSGHMC"


def _check_sghmc(owner: str, momentum_decay: Any, noise_estimate: Any, steps: Any) -> None:
    def number(value):
        return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)

    if not (number(momentum_decay) and 0 < momentum_decay <= 1):
        raise ValueError(
            f"{owner}: momentum_decay must be in (0, 1] (the share of momentum lost per step; "
            f"0.01-0.1 is usual), got {momentum_decay!r}."
        )
    if not (number(noise_estimate) and math.isfinite(noise_estimate) and noise_estimate >= 0):
        raise ValueError(f"{owner}: noise_estimate must be >= 0, got {noise_estimate!r}.")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"{owner}: num_integration_steps must be an integer >= 1, got {steps!r}.")
