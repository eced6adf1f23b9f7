"""``SMILEEnsemble`` across two JAX processes gives the draws of one process.

The last test runs JAX's distributed runtime for real: two subprocesses call
``jax.distributed.initialize`` on localhost (one CPU device each, gloo collectives) and run
the same small ensemble, each computing its own member, while this process runs it on its one
device. Every process must get the whole ``InferenceData`` (the same arrays in both), each
must have replayed only its own member for the log-likelihood and ``evaluate``, and the draws,
pretrained points, log-likelihoods and metrics must equal the single-process ones to float
tolerance. The first tests check, without a runtime, how the member mesh takes devices from
several processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
import pytest

from numpyro_smile import SMILEEnsemble, sharding
from numpyro_smile.models import linear_regression

ROOT = Path(__file__).parents[1]
NUM_PROCESSES = 2
#: Wall-clock limit of the two processes (the test uses about 50 s of CPU time in all: 25-60 s
#: on 2 cores, by their load); past it both are killed, so a lost peer can never hang CI.
TIMEOUT_S = 240

pytestmark = pytest.mark.skipif(
    "jax_cpu_collectives_implementation" not in jax.config.values,
    reason=f"JAX {jax.__version__} has no CPU collectives (jax_cpu_collectives_implementation): "
    "no multi-process runs on CPU",
)


class FakeDevice:
    """A device of some process, for the mesh's choice of devices (no runtime needed)."""

    def __init__(self, process_index: int, id: int):
        self.process_index, self.id = process_index, id

    def __repr__(self) -> str:
        return f"d{self.id}@p{self.process_index}"


@pytest.fixture
def two_processes(monkeypatch):
    """``jax.process_count() == 2`` as seen from process 1, and a mesh that records its
    devices instead of building a ``Mesh`` of fake devices."""
    monkeypatch.setattr(sharding.jax, "process_count", lambda: 2)
    monkeypatch.setattr(sharding.jax, "process_index", lambda: 1)
    monkeypatch.setattr(sharding, "Mesh", lambda devices, axes: (list(devices), axes))


def test_members_must_split_evenly_over_the_processes(two_processes):
    devices = [FakeDevice(0, 0), FakeDevice(1, 1)]
    with pytest.raises(ValueError, match="num_members=3 does not split evenly over 2 processes"):
        sharding.member_mesh(devices, 3)
    with pytest.raises(ValueError, match=r"leaves out every device of process\(es\) \[1\]"):
        sharding.member_mesh(devices[:1], 2)


def test_the_mesh_takes_as_many_devices_from_every_process_in_process_order(two_processes):
    devices = [FakeDevice(1, 5), FakeDevice(0, 1), FakeDevice(1, 4), FakeDevice(0, 0)]
    mesh_devices, axes = sharding.member_mesh(devices, 8)
    assert axes == ("member",)
    assert [(d.process_index, d.id) for d in mesh_devices] == [(0, 0), (0, 1), (1, 4), (1, 5)]
    with pytest.warns(UserWarning, match="using 1 per process"):
        mesh_devices, _ = sharding.member_mesh(devices, 6)  # 6 = 2 processes x 3 members
    assert [(d.process_index, d.id) for d in mesh_devices] == [(0, 0), (1, 4)]
    # every process replays its own block of members: process 1 the second half
    assert sharding.process_members(8) == slice(4, 8)
    assert sharding.process_members(3) is None  # uneven: every process replays them all


def run_case() -> dict[str, np.ndarray]:
    """The run every side makes (2 members, a 3-parameter linear regression, 40 + 40 steps,
    3 pretraining epochs with validation) and what is compared, as NumPy arrays."""
    rng = np.random.default_rng(0)
    X = np.concatenate([np.ones((260, 1)), rng.normal(size=(260, 2))], 1).astype(np.float32)
    y = (X @ np.array([0.5, -1.0, 2.0]) + rng.normal(size=260)).astype(np.float32)
    ensemble = SMILEEnsemble(
        partial(linear_regression, subsample_size=20),
        num_members=2,
        num_warmup=40,
        num_samples=40,
        thinning=2,
        pretrain_epochs=3,
        progress_bar=False,
    )
    idata = ensemble.run(jax.random.key(0), X[:160], y[:160], validation=(X[160:200], y[160:200]))
    metrics = ensemble.evaluate(idata, X[200:], y[200:], by_member=True)
    return {
        "posterior": idata.posterior["beta"].values,
        "lp": idata.sample_stats["lp"].values,
        "step_size": idata.sample_stats["step_size"].values,
        "log_likelihood": idata.log_likelihood["obs"].values,
        "pretrained": idata.pretrained["beta"].values,
        "train_loss": idata.pretraining["train_loss"].values,
        "validation_loss": idata.pretraining["validation_loss"].values,
        "lppd": np.array([metrics["lppd"], *metrics["member_lppd"]]),
        "rmse": np.array(metrics["rmse"]),
        # where the work ran: mesh size, members this process held, draws per replay chunk
        "num_devices": np.array(idata.posterior.attrs["num_devices"]),
        "local_members": np.array(
            sum(shard.data.shape[0] for shard in ensemble.last_state.momentum.addressable_shards)
        ),
        "replay_chunk": np.array(ensemble.memory["observations"]["chunk_size"]),
    }


WORKER = textwrap.dedent(
    """
    import inspect
    import sys

    process_id, port, out, tests = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Only on the loopback interface; give up on a lost peer within a minute (where this JAX
    # has the settings: older ones lack some).
    limits = dict(
        coordinator_bind_address=f"127.0.0.1:{port}",
        initialization_timeout=60,
        shutdown_timeout_seconds=30,
    )
    known = inspect.signature(jax.distributed.initialize).parameters
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
        **{name: value for name, value in limits.items() if name in known},
    )
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 2, 1)
    import numpy as np

    sys.path.insert(0, tests)
    from test_distributed import run_case

    np.savez(out, **run_case())
    """
)


def free_port() -> int:
    """A TCP port that was free a moment ago (the coordinator binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_workers(tmp_path: Path) -> list[tuple[subprocess.Popen, Path, Path]]:
    """Start the processes of the distributed run: ``(process, result file, log file)``.
    They import ``numpyro_smile`` from this checkout, on one CPU device each."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
        "NUMPYRO_SMILE_CACHE_DIR": "off",  # two processes compiling at once: no shared cache
    }
    port = str(free_port())
    workers = []
    for process_id in range(NUM_PROCESSES):
        out, log = tmp_path / f"process{process_id}.npz", tmp_path / f"process{process_id}.log"
        with open(log, "w") as log_file:
            command = [sys.executable, "-c", WORKER, str(process_id), port, str(out)]
            process = subprocess.Popen(
                [*command, str(Path(__file__).parent)],
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        workers.append((process, out, log))
    return workers


def logs(workers: list[tuple[subprocess.Popen, Path, Path]]) -> str:
    """The end of every process's output."""
    return "\n".join(
        f"--- process {i}:\n{log.read_text()[-3000:]}" for i, (_, _, log) in enumerate(workers)
    )


def wait_for(workers: list[tuple[subprocess.Popen, Path, Path]], deadline: float) -> None:
    """Wait until every process has exited; fail as soon as one fails, or at ``deadline``
    (the caller kills what is left)."""
    while True:
        codes = [process.poll() for process, _, _ in workers]
        if any(code not in (None, 0) for code in codes):
            pytest.fail(f"a process failed (exit codes {codes}):\n{logs(workers)}")
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the processes ran past {TIMEOUT_S} s:\n{logs(workers)}")
        time.sleep(0.1)


def test_two_processes_give_the_draws_of_one(tmp_path):
    """Two processes, one member each, give every process the draws that one process with
    both members on one device gives.

    Tolerance: rtol = atol = 1e-5 (float32). Each member does the same arithmetic in both
    runs, but XLA compiles the program partitioned over two processes separately from the
    one-device program and may fuse it differently, so the last bit of a rounding may
    differ; 3 epochs and 80 steps amplify that little. (Measured with JAX 0.10.2: every
    array compared here was bit-identical.) The two processes hold the same gathered arrays,
    so they must agree exactly.
    """
    start = time.monotonic()
    workers = start_workers(tmp_path)
    try:
        single = run_case()  # on this process's one device, while the two processes run
        wait_for(workers, start + TIMEOUT_S)
    finally:
        for process, _, _ in workers:
            if process.poll() is None:
                process.kill()
            process.wait()
    results = [dict(np.load(out)) for _, out, _ in workers]
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)
    multi = results[0]
    # where the work ran: one member per process, a mesh of 2; here both on one device
    assert (multi["num_devices"], multi["local_members"]) == (2, 1)
    assert (single["num_devices"], single["local_members"]) == (1, 2)
    # each process replayed only its own member's draws for the log-likelihood, one chunk of
    # draws at a time as they were sampled (a draw per member: a twentieth of the 20 draws)
    assert (multi["replay_chunk"], single["replay_chunk"]) == (1, 2)
    assert multi["posterior"].shape == (2, 20, 3)
    assert not np.array_equal(multi["posterior"][0], multi["posterior"][1])
    for name in ("num_devices", "local_members", "replay_chunk"):
        del multi[name], single[name]
    assert set(multi) == set(single)
    for name in single:
        np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, atol=1e-5, err_msg=name)
