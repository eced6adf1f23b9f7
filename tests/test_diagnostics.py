"""numpyro_smile.diagnostics: when the after-the-run reset summary warns, and when it does not.

Fast: final states are stand-ins holding what ``check_resets`` reads (steps done ``i`` and
``num_resets`` per chain); the runs that produce real resets are in tests/test_stress.py and
tests/test_ensemble.py.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from numpyro_smile import SMILE, ResetWarning, check_resets
from numpyro_smile.diagnostics import reset_summary

STEPS, CHAINS = 1000, 4
MINIBATCH_RATE = 0.02  # 1 - reset_quantile with the default quantile 0.98
#: The threshold for 4 chains x 1,000 steps at 2 percent: twice the 80 expected resets plus
#: 5 Poisson standard deviations, 160 + 5 sqrt(80) = 204.7.
THRESHOLD = 2 * MINIBATCH_RATE * STEPS * CHAINS + 5 * np.sqrt(MINIBATCH_RATE * STEPS * CHAINS)


def final_state(resets) -> SimpleNamespace:
    resets = np.asarray(resets)
    return SimpleNamespace(i=np.full(resets.shape, STEPS), num_resets=resets)


def kernel(rate: float) -> SimpleNamespace:
    return SimpleNamespace(expected_reset_rate=rate)


def silent(*args, **kwargs):
    """check_resets with every warning turned into an error: returns its result."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return check_resets(*args, **kwargs)


def test_threshold_is_twice_the_expected_count_plus_five_poisson_sds():
    below = [int(THRESHOLD) // CHAINS] * CHAINS  # 51 per chain: 204 in all
    above = list(below)
    above[0] += 1  # 205
    assert reset_summary(below, STEPS, MINIBATCH_RATE) is None
    message = reset_summary(above, STEPS, MINIBATCH_RATE)
    assert message is not None and message.startswith("SMILE guardrail: 205 resets in 4 of 4 ")


def test_minibatch_run_with_many_resets_warns_once():
    state = final_state([300, 20, 0, 0])  # 320 of 4,000 steps, 8 percent
    with pytest.warns(ResetWarning) as record:
        message = check_resets(state, kernel(MINIBATCH_RATE))
    assert len(record) == 1 and str(record[0].message) == message
    assert "320 resets in 2 of 4 chains (8.0% of 4000 steps" in message
    assert "about 2%" in message


def test_healthy_minibatch_run_is_silent():
    # about the designed 2 percent per chain, and no resets at all
    assert silent(final_state([20, 25, 18, 22]), kernel(MINIBATCH_RATE)) is None
    assert silent(final_state([0, 0, 0, 0]), kernel(MINIBATCH_RATE)) is None


def test_full_batch_warns_on_any_reset():
    with pytest.warns(ResetWarning, match="1 resets in 1 of 4 chains") as record:
        message = check_resets(final_state([0, 1, 0, 0]), kernel(0.0))
    assert "every reset is a non-finite step" in message and len(record) == 1
    assert silent(final_state([0, 0, 0, 0]), kernel(0.0)) is None


def test_mcmc_like_source_and_label():
    """An ``MCMC`` is read through ``sampler`` and ``last_state``; ``label`` names a chain."""
    mcmc = SimpleNamespace(sampler=kernel(0.0), last_state=final_state([2, 0]))
    with pytest.warns(ResetWarning, match="2 resets in 1 of 2 members"):
        check_resets(mcmc, label="members")


def test_expected_rate_comes_from_the_kernel_mode():
    """A real kernel: mini-batch mode expects 1 - reset_quantile, full batch none."""
    potential = lambda z, idx=None: 0.5 * (z["x"] ** 2).sum()  # noqa: E731
    minibatch = SMILE(potential_fn=potential, data_size=1000, subsample_size=100)
    assert minibatch.expected_reset_rate == pytest.approx(0.02)
    full = SMILE(potential_fn=potential)
    assert full.expected_reset_rate == 0.0
    assert silent(final_state([20, 25, 18, 22]), minibatch) is None
    with pytest.warns(ResetWarning):
        check_resets(final_state([20, 25, 18, 22]), full)


def test_a_state_without_resets_is_refused():
    with pytest.raises(TypeError, match="needs a SMILE run"):
        check_resets(SimpleNamespace(i=np.zeros(2)), kernel(0.0))
    with pytest.raises(TypeError, match="needs a SMILE run"):
        check_resets(SimpleNamespace(sampler=kernel(0.0), last_state=None))


def test_the_message_names_the_kernel():
    """A stochastic-gradient kernel's resets are its guardrail's (any reset is news); SMILE's
    message keeps its wording."""
    mcmc = SimpleNamespace(
        sampler=SimpleNamespace(expected_reset_rate=0.0, name="SGHMC"),
        last_state=final_state([3, 0]),
    )
    with pytest.warns(ResetWarning, match="SGHMC guardrail: 3 resets in 1 of 2 chains"):
        message = check_resets(mcmc)
    assert "rejects only non-finite steps" in message and "SMILE" not in message
    with pytest.warns(ResetWarning, match="^SGLD guardrail: 3 resets"):
        check_resets(final_state([3, 0]), kernel(0.0), name="SGLD")
    assert reset_summary([3, 0], STEPS, 0.0).startswith("SMILE guardrail: 3 resets")
