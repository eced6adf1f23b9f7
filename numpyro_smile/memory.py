"""Memory of the replays: a budget, the peak a traced function needs, and what a run used.

The replays (full-data log-likelihood, posterior predictive, ``evaluate`` and ``predict``)
evaluate the model at many draws on every data point at once. What such a call holds at its
peak is not its output: a network's intermediate activations per data point and draw can be
hundreds of times larger (a small CNN on 8x8 digits: ~10^4 floats of activations per image
against 10 log-probabilities). Sizing chunks of draws by their output put 2,000 draws x 1,257
images of such a network in one call and exhausted 24 GB.

So chunks are sized by the peak the program itself needs: :func:`peak_live_bytes` walks the
function's jaxpr in order, adds each value when it is made and drops it after its last use,
and takes the largest total (inputs included; nested jits, loops and branches add their own
peak at the point they run; a convolution adds its im2col patches). That is the peak of an
unfused, eager evaluation; XLA's fusion lowers it and its runtime adds a little scratch.
Measured on CPU (tests/test_replay_memory.py) the resident peak of a chunk came within a few
percent of the estimate or below it (a CNN: 52 MiB estimated, 48 MiB used, and 170 MiB
estimated, 169 MiB used; an attention layer: 54 MiB estimated, 36-48 MiB used); chunks are
sized to fill only :data:`HEADROOM` of the budget. XLA's own
``compiled.memory_analysis()`` is not used: on CPU the YNNPACK fusions keep their temporaries
outside buffer assignment, and ``temp_size_in_bytes`` reads 0 for a function whose (1000,
1000) intermediate needs 4 MB (measured with jax 0.10.2).
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.extend import core as jax_core

__all__ = [
    "DEFAULT_REPLAY_BUDGET",
    "HEADROOM",
    "HOST_MEMORY_SHARE",
    "check_budget",
    "check_host_limit",
    "device_peak_bytes",
    "peak_live_bytes",
    "peak_rss_bytes",
    "physical_memory_bytes",
    "reset_peak_rss",
]

#: Bytes a replay chunk may hold at its peak (activations, outputs and inputs), by default.
DEFAULT_REPLAY_BUDGET = 256 * 2**20

_PROC_STATUS, _PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

#: How far the peak may exceed the resident size right after a reset that took effect: the
#: resident set can shrink between the reset and the reading (other threads free memory).
_RESET_SLACK_BYTES = 16 * 2**20

#: Share of the budget that chunks are sized to fill by the estimate (the rest is headroom).
HEADROOM = 0.9


def check_budget(memory_budget: int | None) -> int:
    """``memory_budget`` in bytes (``None``: :data:`DEFAULT_REPLAY_BUDGET`), validated."""
    if memory_budget is None:
        return DEFAULT_REPLAY_BUDGET
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)):
        raise TypeError(
            f"memory_budget must be a number of bytes (an int, e.g. 2**28), got {memory_budget!r}."
        )
    if memory_budget < 2**20:
        raise ValueError(
            f"memory_budget must be at least 1 MiB (2**20 bytes), got {memory_budget}."
        )
    return int(memory_budget)


#: Share of the machine's physical memory that an ensemble's kept draws may take in host
#: memory by default (``SMILEEnsemble(host_memory_limit=None)``).
HOST_MEMORY_SHARE = 0.5


def physical_memory_bytes() -> int | None:
    """The machine's physical memory in bytes (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_host_limit(limit: int | None) -> int | None:
    """``host_memory_limit`` in bytes, validated; ``None``: :data:`HOST_MEMORY_SHARE` of the
    physical memory (``None`` again, no limit, where that is unknown)."""
    if limit is None:
        physical = physical_memory_bytes()
        return None if physical is None else int(HOST_MEMORY_SHARE * physical)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(
            f"host_memory_limit must be a positive number of bytes (e.g. 4 * 2**30), got {limit!r}."
        )
    return int(limit)


def peak_live_bytes(fn: Callable, *args: Any) -> int:
    """Peak bytes of values alive at once while ``fn(*args)`` is evaluated step by step.

    Args:
        fn: a JAX-traceable function.
        args: its arguments, arrays or ``jax.ShapeDtypeStruct`` (nothing is computed).

    Returns:
        The bytes of the inputs and captured constants plus the largest sum of intermediate
        values alive at one point of the program: the peak of an unfused evaluation, close
        to what the compiled function allocates (see the module docstring).
    """
    closed = jax.make_jaxpr(fn)(*args)
    inputs = sum(_nbytes(v) for v in (*closed.jaxpr.invars, *closed.jaxpr.constvars))
    return inputs + _transient_peak(closed.jaxpr)


def _nbytes(var: Any) -> int:
    aval = getattr(var, "aval", None)
    if aval is None or not hasattr(aval, "shape"):
        return 0
    try:
        itemsize = np.dtype(aval.dtype).itemsize
    except TypeError:  # extended dtypes (PRNG keys): a key is two uint32 words
        itemsize = getattr(aval.dtype, "itemsize", 8)
    return int(np.prod(aval.shape, dtype=np.int64)) * int(itemsize)


def _sub_jaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax_core.Jaxpr):
                yield item


def _workspace_bytes(eqn) -> int:
    """Scratch memory an operation takes beyond its output: a convolution's im2col patches
    (every output position's input window, all input features) and a relaid copy of its
    input, which XLA's CPU backend materialises for grouped convolutions, what ``vmap`` over
    per-draw kernels produces. Measured on a CNN replay (8x8 images, 3x3 kernels with 8 and
    16 channels, 10 draws per chunk): 130 MiB resident against 60 MiB of values in the
    jaxpr; the patches make up most of the difference, the input copy the rest (14 draws:
    189 MiB resident, 169 MiB estimated with the patches alone)."""
    if eqn.primitive.name != "conv_general_dilated":
        return 0
    lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
    lhs_spec, rhs_spec, out_spec = eqn.params["dimension_numbers"]
    positions = int(np.prod(out.shape, dtype=np.int64)) // out.shape[out_spec[1]]
    window = int(np.prod([rhs.shape[d] for d in rhs_spec[2:]], dtype=np.int64))
    patches = positions * window * lhs.shape[lhs_spec[1]]
    return (patches + int(np.prod(lhs.shape, dtype=np.int64))) * np.dtype(lhs.dtype).itemsize


def _transient_peak(jaxpr) -> int:
    """Largest bytes of values made inside ``jaxpr`` that are alive at once (its inputs, which
    the caller holds, excluded)."""

    def variables(vars_):
        return {var for var in vars_ if not isinstance(var, jax_core.Literal)}

    last_use: dict = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for var in variables(eqn.invars):
            last_use[var] = i
    kept = variables(jaxpr.outvars)
    made: set = set()
    live = peak = 0
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max((_transient_peak(sub) for sub in _sub_jaxprs(eqn.params)), default=0)
        out = sum(_nbytes(var) for var in eqn.outvars)
        peak = max(peak, live + max(inner, out + _workspace_bytes(eqn)))
        live += out
        made.update(eqn.outvars)
        for var in variables(eqn.invars):  # made here and used for the last time
            if var in made and last_use[var] == i and var not in kept:
                live -= _nbytes(var)
        for var in eqn.outvars:  # made and never used (dropped outputs)
            if var not in last_use and var not in kept:
                live -= _nbytes(var)
    return peak


def peak_rss_bytes() -> int:
    """The process's peak resident set size, in bytes (host memory; on CPU this is also the
    devices' memory): since the start, or since :func:`reset_peak_rss` where Linux allows it.
    """
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set to its current size, so that
    :func:`peak_rss_bytes` measures from here.

    For benchmarks and tests that measure one phase; the library itself never resets it.

    Returns:
        ``True`` when the reset took effect: right after it the peak (``VmHWM``) is within
        16 MiB of the current resident size (``VmRSS``). ``False`` where it is unavailable
        (not Linux, ``/proc/self/clear_refs`` not writable) or where the write is accepted
        but ignored (some sandboxes): then :func:`peak_rss_bytes` still counts from the
        process's start, and a caller that needs the peak of one phase cannot have it.
    """
    try:
        _PROC_CLEAR_REFS.write_text("5")
        status = _PROC_STATUS.read_text()
    except OSError:
        return False
    sizes = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS") and value.split():
            sizes[name] = int(value.split()[0]) * 1024
    if len(sizes) < 2:
        return False
    return sizes["VmHWM"] - sizes["VmRSS"] <= _RESET_SLACK_BYTES


def device_peak_bytes() -> int | None:
    """Largest ``peak_bytes_in_use`` over the local devices, where the backend reports it
    (GPUs and TPUs do; ``None`` on CPU, whose memory is the process's: see
    :func:`peak_rss_bytes`)."""
    peaks = []
    for device in jax.local_devices():
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None
