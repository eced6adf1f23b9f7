"""Phase timings without compile time, and the progress bar (:mod:`numpyro_smile.runtime`)."""

from __future__ import annotations

import io
import time
import types

import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_smile import runtime
from numpyro_smile.runtime import Progress, Timings


class FakeClock:
    """``perf_counter`` replacement that returns the given readings in order."""

    def __init__(self, *readings):
        self.readings = list(readings)

    def perf_counter(self):
        return self.readings.pop(0)


def test_phase_excludes_the_compile_time_inside_it(monkeypatch):
    # phase start 0; compile from 1 to 5 (4 s); phase end 10: 10 - 4 = 6 s of running.
    clock = FakeClock(0.0, 1.0, 5.0, 10.0)
    monkeypatch.setattr(runtime, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    timings = Timings()
    with timings.phase("warmup"):
        compiled = timings.compile(lambda x: 2 * x, jnp.ones(3))
    assert timings.seconds == {"compile_s": 4.0, "warmup_s": 6.0}
    assert clock.readings == []
    np.testing.assert_array_equal(compiled(jnp.arange(3.0)), [0.0, 2.0, 4.0])


def test_compile_time_accumulates_over_phases(monkeypatch):
    clock = FakeClock(0.0, 2.0, 3.0, 10.0, 11.0, 20.0, 21.0, 24.0)
    monkeypatch.setattr(runtime, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    timings = Timings()
    timings.compile(lambda x: x + 1, jnp.ones(2))  # 2 s, outside any phase
    with timings.phase("init"):  # 3 .. 20, with a 1 s compile inside
        timings.compile(lambda x: x - 1, jnp.ones(2))
    with timings.phase("sampling"):  # 21 .. 24, nothing compiled
        pass
    assert timings.seconds == {"compile_s": 3.0, "init_s": 16.0, "sampling_s": 3.0}


def test_phase_is_recorded_when_the_block_raises():
    timings = Timings()
    with pytest.raises(RuntimeError), timings.phase("warmup"):
        time.sleep(0.02)
        raise RuntimeError("stop")
    assert timings.seconds["warmup_s"] >= 0.02


def test_real_clock_compile_and_phase():
    timings = Timings()
    with timings.phase("warmup"):
        compiled = timings.compile(lambda x: jnp.sin(x) @ x, jnp.ones((8, 8)))
        time.sleep(0.05)
        compiled(jnp.ones((8, 8))).block_until_ready()
    first = timings.seconds["compile_s"]
    assert first > 0
    assert 0.05 <= timings.seconds["warmup_s"] < 0.05 + 1.0
    timings.compile(lambda x: jnp.cos(x), jnp.ones(4))
    assert timings.seconds["compile_s"] > first


def test_disabled_progress_is_silent_but_counts(capsys):
    with Progress(enabled=False) as progress:
        progress.start("warmup", 12)
        progress.update(5, "warmup", "step 0.1")
        progress.update(7, "warmup")
        progress.status("compiling the sampling loop")
        progress.start("sampling", 3)
        progress.update(3, "sampling")
        assert progress.phase_done("warmup") == 12
        assert progress.phase_done("sampling") == 3
        assert progress.phase_done("pretraining") == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_is_off_under_ci_by_default(monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    with Progress(enabled=None) as progress:
        progress.start("warmup", 10)
        progress.update(10, "warmup")
        assert progress.phase_done("warmup") == 10 and not progress.enabled
    assert capsys.readouterr().err == ""


def test_enabled_progress_draws_a_bar_per_phase_and_status_lines():
    out = io.StringIO()
    with Progress(enabled=True, file=out) as progress:
        progress.status("compiling pretraining")
        progress.start("pretraining", 3, "epoch")
        progress.update(3, "pretraining")
        progress.start("warmup", 4)
        progress.update(4, "warmup", "eps 0.1")
        progress.start("sampling", 6)
        progress.update(6, "sampling")
        progress.update(2, "warmup")  # not the open bar's phase: counted, not drawn
        assert progress.phase_done("warmup") == 6 and progress.phase_done("sampling") == 6
    text = out.getvalue()
    assert "compiling pretraining\n" in text
    # each phase its own bar, in its own unit, each complete
    assert "pretraining: 100%" in text and "3/3" in text and "epoch" in text
    assert "warmup: 100%" in text and "4/4" in text and "eps 0.1" in text
    assert "sampling: 100%" in text and "6/6" in text


def test_phases_accumulate_and_compile_on_compile_hook():
    announced = []
    timings = Timings(on_compile=announced.append)
    with timings.phase("warmup"):
        time.sleep(0.02)
    with timings.phase("warmup"):
        time.sleep(0.02)
        timings.compile(lambda x: x + 1, jnp.ones(3), what="the warmup loop")
    assert timings.seconds["warmup_s"] >= 0.04
    assert announced == ["the warmup loop"]
