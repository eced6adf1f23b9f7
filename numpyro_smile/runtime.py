"""Wall time and progress of a driver's phases: timings that exclude compilation, a bar.

A driver runs each phase (pretraining, warmup, sampling) as a few calls of one ahead-of-time
compiled function, so it can report progress between calls and time compilation apart from
running: :class:`Timings` compiles and times, :class:`Progress` draws the bar.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax

__all__ = ["PROGRESS_CHUNKS", "Progress", "Timings"]

#: Number of progress updates (and compiled-loop calls) per phase.
PROGRESS_CHUNKS = 20


class Timings:
    """Seconds per phase (``"<phase>_s"``), compilation counted once, in ``"compile_s"``.

    ``seconds`` is a plain dict, e.g. ``{"compile_s": 4.1, "init_s": 0.3, "warmup_s": 2.0}``.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"compile_s": 0.0}

    def compile(self, fn: Callable, *example_args: Any) -> Callable:
        """AOT-compile ``fn`` for ``example_args`` (the compilation timed as ``compile_s``)."""
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*example_args).compile()
        self.seconds["compile_s"] += time.perf_counter() - start
        return compiled

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``"<name>_s"``, less the compilation that happened inside it."""
        start, compiled = time.perf_counter(), self.seconds["compile_s"]
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start - (self.seconds["compile_s"] - compiled)
            self.seconds[f"{name}_s"] = elapsed


class Progress:
    """A tqdm bar over a driver's phases (a no-op when disabled).

    Args:
        total: steps in all phases together.
        enabled: ``None``: only on a terminal, and never when ``$CI`` is set.
    """

    def __init__(self, total: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self._bar = None
        self._done: dict[str, int] = {}
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def update(self, count: int, phase: str, postfix: str = "") -> None:
        """``count`` more steps of ``phase`` done; ``postfix``: the sampler's status text."""
        self._done[phase] = self._done.get(phase, 0) + count
        if self._bar is not None:
            self._bar.set_description(phase)
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(count)

    def phase_done(self, phase: str) -> int:
        """Steps of ``phase`` reported so far."""
        return self._done.get(phase, 0)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()
