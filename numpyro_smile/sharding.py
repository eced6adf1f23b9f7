"""Ensemble members across devices: a 1-D ``jax.sharding`` mesh over the member axis.

Members are independent chains, so they split over devices without communication: every leaf
that leads with the member axis is sharded over the mesh, the data is replicated once. On one
device nothing is placed (``mesh`` is ``None``) and ``vmap`` alone vectorizes the members.

Several processes (JAX's distributed runtime: ``jax.distributed.initialize()`` in every
process first, one process per host or per GPU) run the same program on the same data, SPMD:
``jax.devices()`` then lists every process's devices and the mesh spans them, each process
holding the members of its own devices. What each process has on the host (the data, the
starting points) becomes one global array here (:func:`shard_members`, :func:`replicate`),
and :func:`to_host` brings a global array back whole to every process. With one process these
are the single-process operations they always were (``jax.device_put``, ``jax.device_get``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "gather_members",
    "is_multiprocess",
    "member_mesh",
    "process_members",
    "replicate",
    "shard_members",
    "to_host",
]


def is_multiprocess() -> bool:
    """Whether JAX's distributed runtime runs more than one process (``jax.process_count()``)."""
    return jax.process_count() > 1


def member_mesh(devices: Sequence[jax.Device] | None, num_members: int) -> Mesh | None:
    """A 1-D mesh ``("member",)`` over the most devices that split the members evenly
    (``None`` for one device). Warns when some devices stay idle.

    With several processes the mesh takes the same number of devices from every process,
    ordered by process, so each process holds a contiguous block of
    ``num_members / jax.process_count()`` members (:func:`process_members`); ``num_members``
    must be a multiple of the process count.
    """
    devices = list(devices) if devices is not None else jax.devices()
    if is_multiprocess():
        return _multiprocess_mesh(devices, num_members)
    count = max(n for n in range(1, len(devices) + 1) if num_members % n == 0)
    if count < len(devices):
        warnings.warn(
            f"num_members={num_members} does not split evenly over {len(devices)} devices; "
            f"using {count}. Use a multiple of the device count to use them all.",
            UserWarning,
            stacklevel=3,
        )
    if count == 1:
        return None
    return Mesh(np.array(devices[:count]), ("member",))


def _multiprocess_mesh(devices: list[jax.Device], num_members: int) -> Mesh:
    """The member mesh over every process: ``n`` devices of each, ``n`` the most that split
    the members evenly (every process computes, so none may be left out)."""
    num_processes = jax.process_count()
    by_process: dict[int, list[jax.Device]] = {}
    for device in devices:
        by_process.setdefault(device.process_index, []).append(device)
    missing = sorted(set(range(num_processes)) - set(by_process))
    if missing:
        raise ValueError(
            f"devices= leaves out every device of process(es) {missing}: with "
            f"{num_processes} processes each one holds members, so pass devices of every "
            "process (or leave devices=None for all of them)."
        )
    if num_members % num_processes:
        raise ValueError(
            f"num_members={num_members} does not split evenly over {num_processes} "
            "processes: every process holds the same number of members, so use a multiple "
            f"of {num_processes}."
        )
    per_process = min(len(local) for local in by_process.values())
    count = max(n for n in range(1, per_process + 1) if num_members % (num_processes * n) == 0)
    if count * num_processes < len(devices):
        warnings.warn(
            f"num_members={num_members} does not split evenly over {len(devices)} devices "
            f"of {num_processes} processes; using {count} per process. Use a multiple of "
            "the device count to use them all.",
            UserWarning,
            stacklevel=4,
        )
    mesh_devices = [
        device
        for process in sorted(by_process)
        for device in sorted(by_process[process], key=lambda d: d.id)[:count]
    ]
    return Mesh(np.array(mesh_devices), ("member",))


def shard_members(tree: Any, mesh: Mesh | None, num_members: int) -> Any:
    """Place leaves that lead with the member axis on the mesh; replicate the others.

    With several processes every process passes the same whole tree (the same host values,
    or global arrays), and gets global arrays, each process holding its own members.
    """
    if mesh is None:
        return tree

    def sharding(leaf):
        leading = np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num_members
        return NamedSharding(mesh, PartitionSpec("member") if leading else PartitionSpec())

    return _place(tree, jax.tree.map(sharding, tree))


def replicate(arrays: Any, mesh: Mesh | None) -> Any:
    """Copy the data to every device of the mesh once (not at every call).

    With several processes each process passes its own copy of the same data.
    """
    if mesh is None:
        return arrays
    replicated = NamedSharding(mesh, PartitionSpec())
    return _place(arrays, jax.tree.map(lambda _: replicated, arrays))


def _place(tree: Any, shardings: Any) -> Any:
    """``tree``'s leaves as arrays with ``shardings`` (a tree of the same structure):
    ``jax.device_put`` in one process. Across processes each leaf becomes a global array:
    from the host value every process holds alike (each process puts its own devices'
    parts), or resharded, all in one compiled call, when it is a global array already."""
    if not is_multiprocess():
        return jax.tree.map(jax.device_put, tree, shardings)
    leaves, treedef = jax.tree.flatten(tree)
    targets = jax.tree.leaves(shardings)  # NamedShardings are leaves: one per leaf of tree
    moves = [
        i
        for i, (leaf, target) in enumerate(zip(leaves, targets))
        if isinstance(leaf, jax.Array)
        and not leaf.is_fully_addressable
        and not leaf.sharding.is_equivalent_to(target, leaf.ndim)
    ]
    if moves:
        moved = jax.jit(_identity, out_shardings=tuple(targets[i] for i in moves))(
            tuple(leaves[i] for i in moves)
        )
        for i, leaf in zip(moves, moved):
            leaves[i] = leaf
    return jax.tree.unflatten(
        treedef, [_from_host(leaf, target) for leaf, target in zip(leaves, targets)]
    )


def _from_host(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from a value every process holds alike (a global
    array is returned as it is)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return leaf
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _from_host(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(jax.device_get(leaf))
    host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _identity(x: Any) -> Any:
    return x


def to_host(tree: Any) -> Any:
    """NumPy copies of a tree's arrays, whole on every process (``jax.device_get`` in one
    process; across processes a global array's parts are gathered from all of them, so every
    process must call this at the same point of the program)."""
    if not is_multiprocess():
        return jax.device_get(tree)
    return jax.tree.map(_gather, tree)


def _gather(leaf: Any) -> Any:
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable or leaf.is_fully_replicated:
        return jax.device_get(leaf)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = multihost_utils.process_allgather(jax.random.key_data(leaf), tiled=True)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    return multihost_utils.process_allgather(leaf, tiled=True)


def process_members(num_members: int) -> slice | None:
    """The block of members this process replays (:func:`gather_members` joins the blocks),
    or ``None`` when one process replays them all (one process, or members that do not split
    evenly over the processes). The blocks are those of :func:`member_mesh`'s devices."""
    num_processes = jax.process_count()
    if num_processes == 1 or num_members % num_processes:
        return None
    size = num_members // num_processes
    start = jax.process_index() * size
    return slice(start, start + size)


def gather_members(tree: Any) -> Any:
    """Every process's block of members (leading axis), joined in process order on every
    process: the whole ``(K, ...)`` arrays from :func:`process_members`' blocks."""
    return jax.tree.map(lambda a: multihost_utils.process_allgather(a, tiled=True), tree)
