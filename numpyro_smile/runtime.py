"""Wall time and progress of a driver's phases: timings that exclude compilation, a bar.

A driver runs each phase (pretraining, warmup, sampling) as a few calls of one ahead-of-time
compiled function, so it can report progress between calls and time compilation apart from
running: :class:`Timings` compiles and times, :class:`Progress` draws a bar per phase (ETAs
without compilation) and status lines for the phases in between.
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
    ``on_compile``, when set, is called with a description before each compilation (a
    driver's status line).
    """

    def __init__(self, on_compile: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {"compile_s": 0.0}
        self.on_compile = on_compile
        self._phased = 0.0  # seconds counted by phases so far (a phase excludes inner ones)

    def compile(self, fn: Callable, *example_args: Any, what: str = "") -> Callable:
        """AOT-compile ``fn`` for ``example_args`` (the compilation timed as ``compile_s``)."""
        if self.on_compile is not None and what:
            self.on_compile(what)
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*example_args).compile()
        self.seconds["compile_s"] += time.perf_counter() - start
        return compiled

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``"<name>_s"`` (added to what the phase has so far), less the
        compilation and the phases nested inside it (e.g. post-processing each chunk of
        draws during sampling counts as ``postprocess_s``, not ``sampling_s``)."""
        start, compiled, phased = time.perf_counter(), self.seconds["compile_s"], self._phased
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start - (self.seconds["compile_s"] - compiled)
            elapsed -= self._phased - phased
            self.seconds[f"{name}_s"] = self.seconds.get(f"{name}_s", 0.0) + elapsed
            self._phased += elapsed


class Progress:
    """What a driver is doing, on the terminal: one bar per phase and a line for the rest.

    Each phase (pretraining, warmup, sampling) gets its own bar in its own unit, opened by
    :meth:`start` once the phase's compiled function is ready, so its rate and ETA exclude
    compilation; phases without steps (compiling, initialising, post-processing) get a
    status line (:meth:`status`). Disabled, it only counts (:meth:`phase_done`).

    Args:
        enabled: ``None``: only on a terminal, never when ``$CI`` is set, and with several
            processes (JAX's distributed runtime) only on process 0.
        file: where to write (default ``sys.stderr``).
    """

    def __init__(self, enabled: bool | None, file: Any = None) -> None:
        self._file = sys.stderr if file is None else file
        if enabled is None:
            enabled = self._file.isatty() and not os.environ.get("CI") and jax.process_index() == 0
        self.enabled = bool(enabled)
        self._bar: Any = None
        self._phase = ""
        self._done: dict[str, int] = {}

    def status(self, text: str) -> None:
        """One line, e.g. ``"compiling the warmup loop"``."""
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self._file)

    def start(self, phase: str, total: int, unit: str = "step") -> None:
        """Open the bar of ``phase`` (``total`` ``unit``s), closing the previous one."""
        self._close_bar()
        self._phase = phase
        if self.enabled and total > 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=phase, unit=unit, dynamic_ncols=True, file=self._file
            )

    def update(self, count: int, phase: str, postfix: str = "") -> None:
        """``count`` more units of ``phase`` done; ``postfix``: the sampler's status text."""
        self._done[phase] = self._done.get(phase, 0) + count
        if self._bar is not None and phase == self._phase:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(count)
            if self._bar.n >= self._bar.total:  # done: its rate stops here, not at the next
                self._close_bar()

    def phase_done(self, phase: str) -> int:
        """Units of ``phase`` reported so far."""
        return self._done.get(phase, 0)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close_bar()
