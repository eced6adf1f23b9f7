"""Ensemble members across devices: a 1-D ``jax.sharding`` mesh over the member axis.

Members are independent chains, so they split over devices without communication: every leaf
that leads with the member axis is sharded over the mesh, the data is replicated once. On one
device nothing is placed (``mesh`` is ``None``) and ``vmap`` alone vectorizes the members.

Multi-host: call ``jax.distributed.initialize()`` on every host first; ``jax.devices()`` then
lists all hosts' devices and the mesh spans them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["member_mesh", "replicate", "shard_members"]


def member_mesh(devices: Sequence[jax.Device] | None, num_members: int) -> Mesh | None:
    """A 1-D mesh ``("member",)`` over the most devices that split the members evenly
    (``None`` for one device). Warns when some devices stay idle."""
    devices = list(devices) if devices is not None else jax.devices()
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


def shard_members(tree: Any, mesh: Mesh | None, num_members: int) -> Any:
    """Place leaves that lead with the member axis on the mesh; replicate the others."""
    if mesh is None:
        return tree

    def place(leaf):
        leading = np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num_members
        spec = PartitionSpec("member") if leading else PartitionSpec()
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    return jax.tree.map(place, tree)


def replicate(arrays: Any, mesh: Mesh | None) -> Any:
    """Copy the data to every device of the mesh once (not at every call)."""
    if mesh is None:
        return arrays
    return jax.device_put(arrays, NamedSharding(mesh, PartitionSpec()))
