"""After-the-run summary of guardrail resets: one warning, from Python, never from jitted code.

The message names the kernel (``SMILE guardrail: ...``, ``SGHMC guardrail: ...``): the
stochastic-gradient kernels (:class:`~numpyro_smile.SGLD`, ...) reject only non-finite steps,
so for them any reset is news.

Every step the guardrail rejects (a non-finite position, density or energy error; in
mini-batch mode also an energy error beyond the fitted ``reset_quantile`` of |dE|) keeps the
old position, redraws the velocity and is counted: per step in ``diverging`` and in total in
``SMILEState.num_resets``. In mini-batch mode the quantile rule resets about
``1 - reset_quantile`` of the steps by design (2 percent by default), so only a rate well above
that is news; in full-batch mode every reset is a non-finite step.

:class:`~numpyro_smile.SMILEEnsemble` calls :func:`check_resets` after each run. NumPyro's
``MCMC`` has no hook for a kernel at the end of ``run``, so there call
``check_resets(mcmc)`` yourself (``mcmc.print_summary()`` also reports resets, as divergences).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["ResetWarning", "check_resets", "reset_summary", "status_text"]


class ResetWarning(UserWarning):
    """More guardrail resets than the reset rule explains: the step size met trouble."""


def reset_summary(
    num_resets: Any,
    num_steps: int,
    expected_rate: float,
    label: str = "chains",
    name: str = "SMILE",
) -> str | None:
    """A one-paragraph account of the resets, or ``None`` when they are as expected.

    Args:
        num_resets: ``(num_chains,)`` resets per chain over the whole run (warmup included).
        num_steps: steps per chain over the same span.
        expected_rate: share of steps the reset rule resets by design (``1 - reset_quantile``
            in mini-batch mode, 0 in full batch).
        label: what a chain is called in the message ("chains" or "members").
        name: the kernel whose guardrail it is (``"SMILE"``, ``"SGLD"``, ``"SGHMC"``,
            ``"AdaSGHMC"``): the message names it and says what its guardrail rejects.

    Returns:
        The message when the resets exceed twice the expected count plus 5 Poisson standard
        deviations (any reset when ``expected_rate`` is 0), else ``None``.
    """
    resets = np.atleast_1d(np.asarray(num_resets, dtype=np.int64))
    total, steps = int(resets.sum()), max(1, int(num_steps)) * resets.size
    rate = total / steps
    # Twice the expected count, plus 5 Poisson standard deviations so short runs (where the
    # fitted |dE| distribution is still settling) do not warn by chance.
    expected = expected_rate * steps
    if total == 0 or total <= 2 * expected + 5 * np.sqrt(expected):
        return None
    affected = int(np.count_nonzero(resets))
    counts = f"{total} resets in {affected} of {resets.size} {label} ({rate:.1%} of {steps} steps"
    if name != "SMILE":  # the stochastic-gradient kernels reject only non-finite steps
        return (
            f"{name} guardrail: {counts}; its guardrail rejects only non-finite steps, so none "
            "are expected). A reset keeps the old position (and redraws any momentum), so "
            "every draw stays finite, but this many means the step size is too large for the "
            "curvature or the gradient noise (or a schedule's peak is): choose a smaller "
            "step_size, e.g. with numpyro_smile.select_step_size on held-out data, and check "
            "the start (init_params are unconstrained values; pretrained points help). Look at "
            "sample_stats.diverging (and resets) to see where."
        )
    expectation = (
        f"the reset rule alone accounts for about {expected_rate:.0%}"
        if expected_rate > 0
        else "with full-data gradients every reset is a non-finite step"
    )
    return (
        f"SMILE guardrail: {counts}; {expectation}). A reset rejects a step with a non-finite "
        "or extreme energy error, keeps the position and redraws the velocity, so every draw stays "
        "finite, but this many means the step size keeps meeting trouble: a start far from "
        "the posterior (init_params are unconstrained values: pass log(sigma), not sigma; "
        "pretrained points help), a funnel, heavy tails, outliers, or a fixed step_size too "
        "large. Look at sample_stats.diverging (and resets) to see where; check the start, "
        "then try more warmup, a smaller fixed step_size, or a reparameterisation."
    )


def check_resets(
    source: Any, kernel: Any = None, label: str = "chains", name: str | None = None
) -> str | None:
    """Warn once (:class:`ResetWarning`) if a finished run had more resets than expected.

    Args:
        source: a NumPyro ``MCMC`` that ran a kernel of the package (:class:`~numpyro_smile.
            SMILE`, :class:`~numpyro_smile.SGLD`, ...), or a final state (then pass
            ``kernel``).
        kernel: when ``source`` is a state, the kernel or the core's plan (anything with
            ``expected_reset_rate``).
        label: what a chain is called in the message.
        name: the kernel's name in the message (``None``: ``kernel.name`` where it has one,
            else ``"SMILE"``).

    Returns:
        The warning's message, or ``None`` when there was nothing to report.
    """
    if kernel is None:
        kernel, state = source.sampler, source.last_state
    else:
        state = source
    if state is None or not hasattr(state, "num_resets"):
        raise TypeError(
            "check_resets needs a SMILE run (or an SGLD/SGHMC/AdaSGHMC one): an "
            "MCMC(SMILE(...)) or a final SMILEState (SGState)."
        )
    name = name if name is not None else getattr(kernel, "name", "SMILE")
    num_steps = int(np.max(np.asarray(state.i)))
    message = reset_summary(state.num_resets, num_steps, kernel.expected_reset_rate, label, name)
    if message is not None:
        warnings.warn(message, ResetWarning, stacklevel=2)
    return message


def status_text(mode: str, expected_reset_rate: float, state: Any) -> str:
    """Progress-bar text: the variant, the mean step size, and the resets next to what the
    guardrail resets by design (mini-batch mode: ``1 - reset_quantile`` of the steps; full
    batch: none), so that a healthy run reads as one."""
    resets = int(np.sum(state.num_resets))
    steps = max(1, int(np.max(state.i)) * int(np.size(state.num_resets)))
    if expected_reset_rate > 0:
        rate = f"{100 * resets / steps:.1f}% ({100 * expected_reset_rate:.0f}% by design)"
        reset_text = f"resets {rate}"
    else:
        reset_text = f"resets {resets} (none expected)"
    return f"{mode} | step size {float(np.mean(state.step_size)):.2e} | {reset_text}"
