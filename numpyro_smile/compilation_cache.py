"""JAX's persistent compilation cache for the drivers' compiled functions.

Compiling the warmup and sampling loops is most of a small run's start-up (4-8 s of a
10-20 s ensemble run on 2 CPU cores), and without a cache every run pays it again: a new
process always, and the same process too, because each run builds new closures. JAX can keep
compiled executables on disk, keyed by the program, the compiler options, the backend and
JAX's version, so a second run with the same model, shapes and settings loads them instead.

:func:`persistent_cache` turns that cache on around a driver's run
(:class:`~numpyro_smile.SMILEEnsemble`, and through it :func:`~numpyro_smile.select_step_size`)
and restores JAX's settings afterwards, so the user's own ``jax.jit`` functions are not
cached behind their back. Where it lives:

* ``NUMPYRO_SMILE_CACHE_DIR``, when set: that directory; ``off`` (or ``0``, ``false``,
  ``none``, empty) turns the cache off;
* otherwise ``$XDG_CACHE_HOME/numpyro_smile/jax`` (``~/.cache/numpyro_smile/jax``).

When the user has configured JAX's own cache (``jax_compilation_cache_dir``, e.g. through
``JAX_COMPILATION_CACHE_DIR``), or disabled it (``jax_enable_compilation_cache=False``), that
choice stands and nothing here changes it. Entries are small (about 1 MB for a 16-16 MLP's
loops); delete the directory to clear it. As JAX warns, a compilation cache is trusted code:
do not point it at a directory others can write to.

Compiled code that holds a host callback cannot be cached, which is why the ensemble checks
the end of warmup on the host (:data:`~numpyro_smile.sampler.MEMBERS_CHECK`). NumPyro's
``MCMC`` compiles its own loop, with its progress bar's and the end-of-warmup check's host
callbacks, so ``MCMC(SMILE(...))`` is not covered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

__all__ = ["ENV_VAR", "cache_dir", "persistent_cache"]

#: The environment variable naming the cache directory (or ``off``).
ENV_VAR = "NUMPYRO_SMILE_CACHE_DIR"
_OFF = {"", "0", "off", "false", "no", "none"}


def cache_dir() -> Path | None:
    """The directory the drivers cache compiled code in, or ``None`` when turned off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "numpyro_smile" / "jax"


@contextmanager
def persistent_cache() -> Iterator[Path | None]:
    """Within the block, JAX compiles through the persistent cache at :func:`cache_dir`
    (every compilation, however short), then JAX's settings are restored.

    Yields:
        The directory in use, or ``None`` when the cache is off, the directory cannot be
        created, or the user manages JAX's cache (then their settings apply unchanged).
    """
    path = cache_dir()
    user_managed = jax.config.jax_compilation_cache_dir is not None
    if path is None or user_managed or not jax.config.jax_enable_compilation_cache:
        yield None
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run uncached rather than fail
        yield None
        return
    previous_min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax_cache.reset_cache()  # the next compilation opens the cache at ``path``
    try:
        yield path
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous_min_time)
        jax_cache.reset_cache()
