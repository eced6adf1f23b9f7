"""The member mesh of :mod:`numpyro_smile.sharding`: nothing placed on one device, a warning
when members do not split evenly, and (in a subprocess with two host devices) real sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from numpyro_smile import sharding

ROOT = Path(__file__).parents[1]


def test_one_device_gives_no_mesh_and_no_warning():
    assert len(jax.devices()) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sharding.member_mesh(None, 4) is None
        assert sharding.member_mesh(jax.devices(), 7) is None


@pytest.mark.parametrize(("num_devices", "num_members"), [(2, 3), (3, 5), (4, 7)])
def test_uneven_split_warns_and_uses_fewer_devices(num_devices, num_members):
    """The mesh uses the most devices that divide the members; here only one, so no mesh
    (the one CPU device, listed several times, stands in for several devices)."""
    devices = jax.devices() * num_devices
    with pytest.warns(UserWarning, match=f"num_members={num_members} does not split evenly "):
        mesh = sharding.member_mesh(devices, num_members)
    assert mesh is None


def test_shard_and_replicate_are_identity_without_a_mesh():
    tree = {"z": jnp.ones((4, 3)), "i": jnp.zeros(4), "key": jax.random.key(0), "n": 3}
    assert sharding.shard_members(tree, None, 4) is tree
    arrays = [jnp.ones((10, 2)), jnp.arange(10)]
    assert sharding.replicate(arrays, None) is arrays


SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import jax, jax.numpy as jnp
    from jax.sharding import PartitionSpec
    from numpyro_smile import sharding

    out = {"devices": len(jax.devices())}
    mesh = sharding.member_mesh(None, 4)
    out["mesh"] = [list(mesh.axis_names), int(mesh.devices.size)]
    tree = {"z": jnp.arange(12.0).reshape(4, 3), "w": jnp.ones(3), "s": jnp.ones(())}
    placed = sharding.shard_members(tree, mesh, 4)
    out["z_spec"] = placed["z"].sharding.spec == PartitionSpec("member")
    out["z_shards"] = sorted(
        [list(s.data.shape), s.index[0].start] for s in placed["z"].addressable_shards
    )
    out["w_replicated"] = placed["w"].sharding.is_fully_replicated
    out["s_replicated"] = placed["s"].sharding.is_fully_replicated
    out["z_equal"] = bool((placed["z"] == tree["z"]).all())
    data = sharding.replicate({"X": jnp.ones((5, 2))}, mesh)
    out["data_replicated"] = data["X"].sharding.is_fully_replicated
    out["data_devices"] = len(data["X"].sharding.device_set)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["odd_mesh"] = sharding.member_mesh(None, 3) is None
    out["warnings"] = [str(w.message) for w in caught]
    print(json.dumps(out))
    """
)


def test_members_shard_over_two_host_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    assert out["mesh"] == [["member"], 2]
    assert out["z_spec"]
    assert out["z_shards"] == [[[2, 3], 0], [[2, 3], 2]]  # two members per device
    assert out["w_replicated"] and out["s_replicated"] and out["z_equal"]
    assert out["data_replicated"] and out["data_devices"] == 2
    assert out["odd_mesh"]
    assert out["warnings"] == [
        "num_members=3 does not split evenly over 2 devices; using 1. "
        "Use a multiple of the device count to use them all."
    ]
