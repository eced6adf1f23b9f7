"""Kept draws appended to a netCDF file chunk by chunk, for draws larger than host memory.

``SMILEEnsemble(draws_to=path)`` hands every chunk of draws, once post-processed
(:class:`~numpyro_smile.draw_groups.DrawGroups`), to a :class:`DrawsFile`, which appends its
rows to the ``posterior``, ``sample_stats``, ``log_likelihood`` and ``posterior_predictive``
groups of one netCDF-4 (HDF5) file and lets it go: host memory holds one chunk at a time,
however many draws the run keeps. The file has ArviZ's layout (one netCDF group per
InferenceData group, dims ``(chain, draw, ...)``, ``chain`` and ``draw`` coordinates, booleans
as ``int8`` flagged ``dtype="bool"`` as xarray writes them), so ``arviz.from_netcdf(path)``
opens it, lazily: a variable is read from disk when it is indexed or its ``.values`` asked for.

The ``draw`` dimension is unlimited and grows with every chunk. The HDF5 chunks of a
variable hold whole draws of one member (about 1 MiB, at least one draw), so reading a draw,
or a member's run of draws, touches few of them. Written with h5netcdf (ArviZ's own
dependency); nothing here imports ArviZ or xarray.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["DrawsFile", "HostDraws", "check_path"]

#: Target bytes of one HDF5 chunk of a variable (whole draws of one member, at least one).
CHUNK_BYTES = 2**20


def check_path(path: str | os.PathLike) -> Path:
    """``path`` as a file path to write the draws to: its folder must exist and it must not be
    a folder itself (an existing file is replaced)."""
    try:
        path = Path(os.fspath(path))
    except TypeError:
        raise TypeError(
            f"draws_to must be a file path (str or os.PathLike), e.g. 'draws.nc', got {path!r}."
        ) from None
    if path.is_dir():
        raise ValueError(
            f"draws_to={os.fspath(path)!r} is a folder; give a file path in it, e.g. "
            f"{os.fspath(path / 'draws.nc')!r}."
        )
    if not path.parent.is_dir():
        raise ValueError(
            f"draws_to={os.fspath(path)!r}: the folder {os.fspath(path.parent)!r} does not "
            "exist; create it first."
        )
    return path


class DrawsFile:
    """A netCDF file the draws of ``num_members`` chains are appended to, group by group.

    Args:
        path: the file (replaced if it exists); see :func:`check_path`.
        num_members: K, the chains' count (the ``chain`` dimension).

    Use :meth:`append` for each chunk, in order, then :meth:`close` (or use it as a context
    manager). Other groups (small ones: observed data, pretrained points) are added after
    closing, e.g. with xarray's ``to_netcdf(path, mode="a", group=...)``.
    """

    def __init__(self, path: str | os.PathLike, num_members: int) -> None:
        import h5netcdf  # ArviZ's own netCDF engine: no extra dependency

        self.path = check_path(path)
        self.num_members = int(num_members)
        self.num_draws = 0
        try:
            self._file = h5netcdf.File(self.path, "w")
        except OSError as error:
            if "already open" not in str(error):
                raise
            raise OSError(
                f"Cannot replace {os.fspath(self.path)!r}: this process still has it open "
                "(an InferenceData of an earlier run reads it lazily). Write to another path, "
                "or close that InferenceData first: idata.close()."
            ) from error
        self._groups: dict = {}

    def append(self, groups: dict[str, dict[str, np.ndarray]], dims: dict, coords: dict) -> None:
        """Append a chunk's rows to the file.

        Args:
            groups: ``{group: {name: array (K, c, ...)}}``, the same names and inner shapes at
                every call (the first call creates the variables).
            dims: ``{name: [dim, ...]}``: names of a variable's inner axes (default
                ``"<name>_dim_<i>"``), as ArviZ names them.
            coords: ``{dim: values}``: coordinates of inner dims (e.g. a data subset's
                indices), written once.
        """
        count = {np.shape(v)[1] for values in groups.values() for v in values.values()}
        if len(count) != 1:
            raise ValueError(f"Every group of a chunk needs the same number of draws: {count}.")
        (count,) = count
        start, stop = self.num_draws, self.num_draws + count
        for group, values in groups.items():
            handle = self._groups.get(group)
            if handle is None:
                handle = self._groups[group] = self._create(group, values, dims, coords)
            handle.resize_dimension("draw", stop)
            handle.variables["draw"][start:stop] = np.arange(start, stop)
            for name, value in values.items():
                value = np.asarray(value)
                if value.dtype == bool:
                    value = value.astype(np.int8)
                handle.variables[name][:, start:stop] = value
        self.num_draws = stop
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DrawsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self, group: str, values: dict, dims: dict, coords: dict):
        handle = self._file.create_group(group)
        handle.dimensions["chain"] = self.num_members
        handle.dimensions["draw"] = None  # unlimited: grows with every chunk
        handle.create_variable("chain", ("chain",), data=np.arange(self.num_members))
        handle.create_variable("draw", ("draw",), dtype=np.int64, chunks=(2**12,))
        for name, value in values.items():
            value = np.asarray(value)
            inner = list(dims.get(name, [f"{name}_dim_{i}" for i in range(value.ndim - 2)]))
            for dim, size in zip(inner, value.shape[2:]):
                if dim not in handle.dimensions:
                    handle.dimensions[dim] = size
                    if dim in coords:
                        handle.create_variable(dim, (dim,), data=np.asarray(coords[dim]))
            dtype = np.dtype(np.int8) if value.dtype == bool else value.dtype
            draw_bytes = max(1, int(np.prod(value.shape[2:], dtype=np.int64)) * dtype.itemsize)
            draws = max(1, min(2**16, CHUNK_BYTES // draw_bytes))
            variable = handle.create_variable(
                name,
                ("chain", "draw", *inner),
                dtype=dtype,
                chunks=(1, draws, *value.shape[2:]),
            )
            if value.dtype == bool:  # as xarray encodes booleans (decoded back on reading)
                variable.attrs["dtype"] = "bool"
        return handle


class HostDraws:
    """Kept draws in host memory, with :class:`DrawsFile`'s ``append``: arrays of
    ``num_draws`` draws allocated at the first chunk and filled chunk by chunk.

    Args:
        num_draws: the most draws that will be appended (fewer leave the rest unused).
    """

    def __init__(self, num_draws: int) -> None:
        self.num_draws = 0
        self._capacity = int(num_draws)
        self._groups: dict[str, dict[str, np.ndarray]] = {}

    def append(self, groups: dict[str, dict[str, np.ndarray]], dims: dict, coords: dict) -> None:
        """Copy a chunk's rows (``{group: {name: (K, c, ...)}}``; ``dims`` and ``coords``
        are unused here) into the host arrays."""
        del dims, coords
        count = 0
        for group, values in groups.items():
            stored = self._groups.setdefault(group, {})
            for name, value in values.items():
                value = np.asarray(value)
                if name not in stored:
                    shape = (value.shape[0], self._capacity, *value.shape[2:])
                    stored[name] = np.empty(shape, value.dtype)
                count = value.shape[1]
                stored[name][:, self.num_draws : self.num_draws + count] = value
        self.num_draws += count

    def groups(self) -> dict[str, dict[str, np.ndarray]]:
        """``{group: {name: (K, S, ...)}}`` of the draws appended."""
        return {
            group: {name: value[:, : self.num_draws] for name, value in values.items()}
            for group, values in self._groups.items()
        }
