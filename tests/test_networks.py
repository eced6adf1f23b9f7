"""The ready CNN and transformer of numpyro_smile.models: sites, priors, plates, densities by
hand, short SMILEEnsemble runs with evaluate, and the peak memory of those runs.

The networks are tiny (a few thousand parameters) and the runs tens of steps: the ensemble
runs check that every stage works on these architectures and gives finite draws and metrics
that beat chance, not how well they sample (``benchmarks/priors.py`` measures that).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from functools import partial
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density
from scipy import stats

from numpyro_smile import ResetWarning, SMILEEnsemble, datasets, memory, models

from .conftest import data_file

K = 2  # members of every ensemble run here
REPLAY_BUDGET = 32 * 2**20  # memory_budget of the runs' replays (log-likelihood, evaluate)


def trace(model, *args, seed=0, **kwargs):
    return handlers.trace(handlers.seed(model, seed)).get_trace(*args, **kwargs)


def abstract_trace(model, *args, **kwargs) -> dict:
    """The model's trace under ``jax.eval_shape`` (nothing computed, no op compiled): per
    site its type, value shape, plate args and frames, distribution type and event shape,
    the logits' shape where it has logits, and the Normal prior's standard deviation."""
    sites = {}

    def run(*args):
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
        for name, site in tr.items():
            fn = site.get("fn")
            base = fn
            while base is not None and hasattr(base, "base_dist"):
                base = base.base_dist
            sites[name] = {
                "type": site["type"],
                "shape": tuple(jnp.shape(site["value"])),
                "args": site.get("args"),
                "observed": site.get("is_observed", False),
                "frames": [(f.name, f.dim) for f in site.get("cond_indep_stack", ())],
                "base": base,
                "event_shape": getattr(fn, "event_shape", None),
                "logits": tuple(fn.logits.shape) if hasattr(fn, "logits") else None,
                "sd": float(base.scale) if isinstance(base, dist.Normal) else None,
            }

    jax.eval_shape(run, *args)
    return sites


def latent_shapes(sites: dict) -> dict:
    return {
        name: site["shape"]
        for name, site in sites.items()
        if site["type"] == "sample" and not site["observed"]
    }


def prior_sds(sites: dict) -> set:
    """The prior standard deviations of the weights (``y`` may be latent: no labels given)."""
    return {
        s["sd"]
        for name, s in sites.items()
        if s["type"] == "sample" and not s["observed"] and name != "y"
    }


@contextlib.contextmanager
def short_run():
    """Tens of steps end warmup unsettled: resets may exceed what the reset rule explains
    (a ``ResetWarning``, which tests/test_diagnostics.py checks), not what these tests are
    about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResetWarning)
        yield


def peak_growth(fn):
    """``(fn(), peak resident growth in bytes while it ran)``: host memory, which on CPU is
    also the devices'. Fails (never skips) where the peak cannot be reset."""
    if not memory.reset_peak_rss():
        pytest.fail("cannot reset the peak resident set on this system (/proc/self/clear_refs)")
    base = memory.peak_rss_bytes()
    out = fn()
    return out, memory.peak_rss_bytes() - base


# ------------------------------------------------------------------ CNN: sites and priors


@pytest.mark.parametrize(
    ("shape", "spatial_dims", "kernels", "flat"),
    [
        ((6, 8, 8), None, [(3, 3, 1, 4), (3, 3, 4, 5)], 2 * 2 * 5),  # (N, H, W): 2-D, 1 channel
        ((6, 8, 8, 1), None, [(3, 3, 1, 4), (3, 3, 4, 5)], 2 * 2 * 5),
        ((6, 9, 7, 3), None, [(3, 3, 3, 4), (3, 3, 4, 5)], 2 * 1 * 5),  # odd sizes: floor
        ((6, 40), None, [(3, 1, 4), (3, 4, 5)], 10 * 5),  # (N, L): 1-D
        ((6, 40, 2), 1, [(3, 2, 4), (3, 4, 5)], 10 * 5),  # (N, L, C) needs spatial_dims=1
    ],
)
def test_cnn_layouts_and_sites(shape, spatial_dims, kernels, flat):
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=shape), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=shape[0]), jnp.int32)
    tr = abstract_trace(
        partial(models.cnn_classification, y=y),
        X,
        num_classes=3,
        channels=(4, 5),
        dense=(7,),
        spatial_dims=spatial_dims,
    )
    assert latent_shapes(tr) == {
        "conv0_w": kernels[0], "conv0_b": (4,), "conv1_w": kernels[1], "conv1_b": (5,),
        "dense0_w": (flat, 7), "dense0_b": (7,), "out_w": (7, 3), "out_b": (3,),
    }  # fmt: skip
    assert tr["y"]["logits"] == (shape[0], 3)
    assert tr["data"]["args"] == (shape[0], None)


def test_cnn_apply_by_hand_1d():
    """One 1-D convolution ("SAME" padding: one zero each side for k = 3), GELU, average
    pooling by 2, the output layer: by hand in NumPy."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 2))
    params = {
        "conv0_w": rng.normal(size=(3, 2, 4)), "conv0_b": rng.normal(size=4),
        "out_w": rng.normal(size=(12, 3)), "out_b": rng.normal(size=3),
    }  # fmt: skip
    padded = np.pad(x, ((0, 0), (1, 1), (0, 0)))
    conv = np.stack(
        [np.einsum("bkc,kco->bo", padded[:, t : t + 3], params["conv0_w"]) for t in range(6)], 1
    )
    with jax.enable_x64(True):
        gelu = np.asarray(jax.nn.gelu(jnp.asarray(conv + params["conv0_b"])))
        got = models.cnn_apply(jax.tree.map(jnp.asarray, params), jnp.asarray(x))
    pooled = gelu.reshape(2, 3, 2, 4).mean(2).reshape(2, 12)
    expected = pooled @ params["out_w"] + params["out_b"]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_cnn_priors():
    X = jnp.zeros((4, 8, 8, 2))
    kwargs = {"num_classes": 10, "channels": (8,), "kernel_size": 3, "dense": (16,)}
    default = abstract_trace(models.cnn_classification, X, **kwargs)  # N(0, 1) everywhere
    assert prior_sds(default) == {1.0}
    fan_in = abstract_trace(models.cnn_classification, X, prior="fan_in", **kwargs)
    assert fan_in["conv0_w"]["sd"] == pytest.approx(1 / math.sqrt(3 * 3 * 2))
    assert fan_in["dense0_w"]["sd"] == pytest.approx(1 / math.sqrt(4 * 4 * 8))
    assert fan_in["out_w"]["sd"] == pytest.approx(1 / 4)
    assert fan_in["conv0_b"]["sd"] == fan_in["out_b"]["sd"] == 1.0
    he = abstract_trace(models.cnn_classification, X, prior="fan_in", prior_scale=2**0.5, **kwargs)
    assert he["out_w"]["sd"] == pytest.approx(2**0.5 / 4)
    assert he["out_b"]["sd"] == pytest.approx(2**0.5)
    isotropic = abstract_trace(
        models.cnn_classification, X, prior="isotropic", prior_scale=0.5, **kwargs
    )
    assert prior_sds(isotropic) == {0.5}
    # a callable prior, as numpyro.contrib.module's: (name, shape) -> distribution
    laplace = abstract_trace(
        models.cnn_classification, X, prior=lambda name, shape: dist.Laplace(0.0, 0.1), **kwargs
    )
    site = laplace["conv0_w"]
    assert site["event_shape"] == (3, 3, 2, 8) and isinstance(site["base"], dist.Laplace)


def test_cnn_errors():
    cnn = models.cnn_classification
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        abstract_trace(cnn, jnp.zeros((4, 8, 8)), num_classes=1)
    with pytest.raises(ValueError, match="smaller than the pooling window"):
        abstract_trace(cnn, jnp.zeros((4, 4, 4)), num_classes=2, channels=(2,) * 3)
    with pytest.raises(ValueError, match=r"expected \(N, L\) or \(N, L, C\)"):
        abstract_trace(cnn, jnp.zeros((4, 8, 8, 1)), num_classes=2, spatial_dims=1)
    with pytest.raises(ValueError, match="prior must be one of"):
        abstract_trace(cnn, jnp.zeros((4, 8)), num_classes=2, prior="he")


# ------------------------------------------------------------------ transformer


V, T, D = 7, 6, 8


def tokens_data(n=20, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, size=(n, T + 1)), jnp.int32)


LM = partial(models.transformer_lm, vocab_size=V, context=T, d_model=D, num_heads=2, num_layers=3)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_transformer_sites_and_plates(tie_weights):
    tokens = tokens_data()
    tr = abstract_trace(partial(LM, subsample_size=5), tokens, tie_weights=tie_weights)
    expected = {
        "tok_emb": (V, D), "pos_emb": (T, D),
        "attn_qkv_w": (3, D, 3 * D), "attn_qkv_b": (3, 3 * D),
        "attn_out_w": (3, D, D), "attn_out_b": (3, D),
        "mlp_in_w": (3, D, 4 * D), "mlp_in_b": (3, 4 * D),
        "mlp_out_w": (3, 4 * D, D), "mlp_out_b": (3, D),
        "head_b": (V,),
    }  # fmt: skip
    if not tie_weights:
        expected["head_w"] = (D, V)
    assert latent_shapes(tr) == expected
    # sequences are the mini-batch plate, positions a full inner plate
    assert tr["data"]["args"] == (20, 5) and tr["tokens"]["args"] == (T, None)
    y = tr["y"]
    assert y["frames"] == [("tokens", -1), ("data", -2)]
    assert y["shape"] == (5, T) and y["logits"] == (5, T, V)
    # the observed values are the next tokens of the plate's sequences
    idx, observed = jax.jit(
        lambda t: (lambda tr: (tr["data"]["value"], tr["y"]["value"]))(
            trace(LM, t, 5, tie_weights=tie_weights)
        )
    )(tokens)
    np.testing.assert_array_equal(observed, np.asarray(tokens)[np.asarray(idx), 1:])


@functools.cache
def _prior_sampler(args: tuple, prior: str):
    sample = partial(models.transformer_params, *args, prior=prior)
    return jax.jit(lambda key: handlers.seed(sample, key)())


def prior_draw(seed: int = 0, args: tuple = (V, T, D, 3), prior: str = "fan_in") -> dict:
    """One prior draw of :func:`transformer_params` (``LM``'s by default), in one compiled
    call (no forward pass; compiled once per ``args`` and ``prior``)."""
    return _prior_sampler(args, prior)(jax.random.key(seed))


#: ``LM``'s forward pass, compiled once for the tests that share its shapes.
APPLY = jax.jit(partial(models.transformer_apply, num_heads=2))


def test_transformer_is_causal():
    """Changing token t changes the logits at t and after, never before."""
    params, apply = prior_draw(), APPLY
    inputs = tokens_data(2)[:, :-1]
    changed = inputs.at[:, 3].set((inputs[:, 3] + 1) % V)
    before, after = apply(params, inputs), apply(params, changed)
    assert before.shape == (2, T, V)
    np.testing.assert_allclose(before[:, :3], after[:, :3], rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(before[:, 3:] - after[:, 3:]).max(-1) > 1e-4)
    # shorter sequences read the first rows of the position embedding
    np.testing.assert_allclose(apply(params, inputs[:, :4]), before[:, :4], rtol=1e-5)


def test_transformer_prior_logit_scale():
    """Prior predictive: fan-in scaling (the default) gives logits of sd about sqrt 2 (the
    tied head's 1 and the bias's 1; measured 1.4); N(0, 1) weights make the head's part grow
    like sqrt(d_model) (measured 2.6 at d_model = 8; 5.7 at 32 in benchmarks/priors.py)."""
    inputs = tokens_data(2)[:, :-1]  # the shapes of test_transformer_is_causal: one compile
    sd = {
        prior: np.mean(
            [
                float(jnp.std(APPLY(prior_draw(seed, prior=prior), inputs), -1).mean())
                for seed in range(4)
            ]
        )
        for prior in ("fan_in", "isotropic")
    }
    assert 0.8 < sd["fan_in"] < 2.2 and sd["isotropic"] > 1.5 * sd["fan_in"], sd


def test_transformer_minibatch_log_density_by_hand():
    """Joint = prior + N / B x (sum over the B x T tokens of log softmax(logits)[next])."""
    tokens, params = tokens_data(), prior_draw(3)

    @jax.jit
    def joint_and_likelihood(tokens, params):
        joint, tr = log_density(handlers.seed(LM, 3), (tokens, 5), {}, params)
        idx = tr["data"]["value"]
        logits = models.transformer_apply(params, tokens[idx, :-1], num_heads=2)
        log_probs = jax.nn.log_softmax(logits, -1)
        return joint, jnp.take_along_axis(log_probs, tokens[idx, 1:, None], -1).sum()

    joint, likelihood = joint_and_likelihood(tokens, params)
    sds = abstract_trace(LM, tokens)
    prior = sum(
        stats.norm(0, sds[name]["sd"]).logpdf(np.asarray(value, np.float64)).sum()
        for name, value in params.items()
    )
    np.testing.assert_allclose(float(joint), prior + 20 / 5 * float(likelihood), rtol=1e-5)


def test_transformer_priors():
    fan_in = abstract_trace(LM, tokens_data(), tie_weights=False)
    assert fan_in["tok_emb"]["sd"] == fan_in["pos_emb"]["sd"] == pytest.approx(D**-0.5)
    for name in ("attn_qkv_w", "attn_out_w", "mlp_in_w", "head_w"):
        assert fan_in[name]["sd"] == pytest.approx(D**-0.5), name
    assert fan_in["mlp_out_w"]["sd"] == pytest.approx((4 * D) ** -0.5)
    assert fan_in["attn_qkv_b"]["sd"] == fan_in["head_b"]["sd"] == 1.0
    assert prior_sds(abstract_trace(LM, tokens_data(), prior="isotropic", prior_scale=0.3)) == {0.3}


def test_transformer_errors():
    with pytest.raises(ValueError, match="integer array"):
        abstract_trace(LM, tokens_data().astype(jnp.float32))
    with pytest.raises(ValueError, match="the network reads 1 to context = 6"):
        abstract_trace(LM, jnp.zeros((3, T + 2), jnp.int32))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        abstract_trace(LM, tokens_data(), num_heads=3)


# ------------------------------------------------------------------ ensembles end to end


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    X = (data.images / 16.0).astype(np.float32)  # (N, 8, 8): 2-D, one channel
    y = data.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    return (X[order[:600]], y[order[:600]]), (X[order[-300:]], y[order[-300:]])


def measured_ensemble_run(model, key, train: tuple, test: tuple) -> SimpleNamespace:
    """A 2-member ensemble of a tiny network (300 pretraining, 40 + 40 steps) run on ``train``
    and evaluated on ``test``: its ``idata``, test metrics (``posterior``), peak memory growth
    (``peak``, bytes), ``wall`` (s) and the ``ensemble``."""
    ensemble = SMILEEnsemble(
        model,
        num_members=K,
        num_warmup=40,
        num_samples=40,
        thinning=4,
        pretrain_steps=300,
        memory_budget=REPLAY_BUDGET,
    )

    def run():
        with short_run():
            idata = ensemble.run(key, *train)
        return idata, ensemble.evaluate(idata, *test)

    start = time.perf_counter()
    (idata, posterior), peak = peak_growth(run)
    return SimpleNamespace(
        idata=idata, posterior=posterior, peak=peak,
        wall=time.perf_counter() - start, ensemble=ensemble,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cnn_run():
    """A 2-D CNN (3,700 parameters) on 600 8x8 digits, 2 members, with its peak memory."""
    train, test = digits()
    model = partial(models.cnn_classification, num_classes=10, subsample_size=32)
    return measured_ensemble_run(model, jax.random.key(0), train, test)


def test_cnn_ensemble_on_digits(cnn_run):
    idata, posterior = cnn_run.idata, cnn_run.posterior
    assert idata.posterior["conv0_w"].shape == (K, 10, 3, 3, 1, 8)
    for name, value in idata.posterior.data_vars.items():
        assert np.all(np.isfinite(value.values)), name
    assert idata.log_likelihood["y"].shape == (K, 10, 600)
    assert posterior["num_draws"] == K * 10
    # chance is 10 percent and log(1 / 10) = -2.3; 300 AdamW steps of a tiny CNN reach far more
    assert posterior["accuracy"] > 0.7 and posterior["lppd"] > -1.2, posterior
    assert 0 <= posterior["ece"] < 0.3


def synthetic_text(length: int, seed: int) -> str:
    """Words of a small vocabulary in random order: spelling is learnable, the order not."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "me"]
    rng = np.random.default_rng(seed)
    text = " ".join(rng.choice(words, size=length // 2))
    return text[:length]


LM_CONTEXT = 16
TEXT_LM = partial(models.transformer_lm, context=LM_CONTEXT, d_model=16, num_heads=2, num_layers=2)


@pytest.fixture(scope="module")
def transformer_run():
    """A 2-block character GPT (6,900 parameters) on 800 characters, 2 members."""
    train_text, test_text = synthetic_text(800, 0), synthetic_text(400, 1)
    vocab = datasets.char_vocabulary(train_text + test_text)
    train = datasets.char_sequences(train_text, LM_CONTEXT, vocab=vocab, stride=8)
    test = datasets.char_sequences(test_text, LM_CONTEXT, vocab=vocab)
    model = partial(TEXT_LM, vocab_size=len(vocab), subsample_size=16)
    run = measured_ensemble_run(model, jax.random.key(1), (train,), (test,))
    return SimpleNamespace(**vars(run), train=train, test=test, vocab=vocab)


def test_transformer_ensemble_per_token_metrics(transformer_run):
    run = transformer_run
    idata, posterior = run.idata, run.posterior
    for name, value in idata.posterior.data_vars.items():
        assert np.all(np.isfinite(value.values)), name
    # the log-likelihood group is per token: sequences x positions
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "data", "tokens")
    assert ll.shape == (K, 10, *run.train[:, 1:].shape)
    np.testing.assert_array_equal(idata.observed_data["y"].values, run.train[:, 1:])
    # evaluate: per-token LPPD (mean over all test tokens of log mean_draws p), token accuracy
    uniform = -math.log(len(run.vocab))
    assert posterior["lppd"] > uniform + 0.5, (posterior, uniform)
    assert 0.2 < posterior["accuracy"] <= 1.0


def test_evaluate_lppd_is_per_token(transformer_run):
    """The LPPD evaluate reports is the mean over test tokens of log (mean over draws of
    p(token)), from the draws by hand."""
    run = transformer_run
    draws = {
        name: np.asarray(run.idata.posterior[name].values).reshape(-1, *value.shape[2:])
        for name, value in run.idata.posterior.data_vars.items()
    }
    test = jnp.asarray(run.test)

    def token_log_probs(params):
        logits = models.transformer_apply(params, test[:, :-1], num_heads=2)
        return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), test[:, 1:, None], -1)[..., 0]

    pointwise = jax.lax.map(token_log_probs, draws)  # (draws, n, T)
    by_hand = jnp.mean(jax.nn.logsumexp(pointwise, 0) - math.log(pointwise.shape[0]))
    np.testing.assert_allclose(run.posterior["lppd"], float(by_hand), rtol=1e-4)


def test_cnn_ensemble_on_mnist1d():
    """1-D inputs: MNIST-1D made by the mnist1d package (no download), (N, 40) signals."""
    pytest.importorskip("mnist1d", reason="mnist1d is not installed (pip install mnist1d)")
    split = datasets.load_mnist1d(num_train=500, num_test=200)
    ensemble = SMILEEnsemble(
        partial(models.cnn_classification, num_classes=10, subsample_size=32, channels=(8,)),
        num_members=K,
        num_warmup=30,
        num_samples=20,
        thinning=2,
        pretrain_steps=200,
        log_likelihood=False,
    )
    with short_run():
        idata = ensemble.run(jax.random.key(2), *split.train)
    assert idata.posterior["conv0_w"].shape == (K, 10, 3, 1, 8)
    assert idata.posterior["dense0_w"].shape == (K, 10, 20 * 8, 32)
    for name, value in idata.posterior.data_vars.items():
        assert np.all(np.isfinite(value.values)), name
    metrics = ensemble.evaluate(idata, *split.test)
    # chance: 10 percent, log(1 / 10) = -2.3; MNIST-1D is hard for 500 examples and 200 steps
    assert metrics["accuracy"] > 0.2 and metrics["lppd"] > -2.3, metrics


# ------------------------------------------------------------------ peak memory


#: Peak resident growth (host memory, which on CPU is also the devices') allowed for one tiny
#: ensemble run and an ``evaluate`` call, replays limited to ``REPLAY_BUDGET``. The data,
#: draws and replays take a few MiB; what the process gains is XLA's compiled programs and
#: the caches of eager dispatch (JAX keeps both), and malloc's arenas. Measured in a fresh test
#: process on 2 CPU cores (jax 0.10.2): CNN 770 MiB, transformer 890 MiB (an MLP of the same
#: size run the same way: 420 MiB); after other tests in the same process, less. The budget,
#: 1.5 GiB, is 1.7-2x the fresh figures: it catches what grows with the network or the data
#: (an unrolled layer loop, a replay holding all draws' activations, a members x draws x
#: points x vocabulary array), not machine-to-machine noise.
PEAK_BUDGET = {"cnn": 1536 * 2**20, "transformer": 1536 * 2**20}


@pytest.mark.parametrize("family", ["cnn", "transformer"])
def test_peak_memory_within_budget(family, request):
    run = request.getfixturevalue(f"{family}_run")
    print(
        f"\n{family}: peak resident growth {run.peak / 2**20:.0f} MiB over run and evaluate "
        f"({run.wall:.0f} s); budget {PEAK_BUDGET[family] / 2**20:.0f} MiB; replay chunks "
        f"{run.ensemble.memory['observations']}"
    )
    assert 0 < run.peak <= PEAK_BUDGET[family], run.peak
    # the full-data log-likelihood replay was chunked to fit its budget
    chunks = run.ensemble.memory["observations"]
    assert chunks["chunk_peak_bytes"] <= memory.HEADROOM * REPLAY_BUDGET, chunks


# ------------------------------------------------------------------ Shakespeare


def test_shakespeare_windows():
    """The real text: 65 symbols, split by position, windows that decode back to the text and
    are the language model's input (traced abstractly)."""
    text = data_file("shakespeare_simple.txt").read_text()
    vocab = datasets.char_vocabulary(text)
    assert len(vocab) == 65 and len(text) > 1_000_000
    train, valid, test = datasets.split_text(text)
    assert train + valid + test == text and len(test) == pytest.approx(0.05 * len(text), abs=1)
    windows = datasets.char_sequences(test[:400], 32, vocab=vocab)
    assert windows.shape == (12, 33)
    assert "".join(vocab[i] for i in windows[0]) == test[:33]
    sites = abstract_trace(
        partial(TEXT_LM, vocab_size=65, context=32, subsample_size=4), jnp.asarray(windows)
    )
    assert sites["tok_emb"]["shape"] == (65, 16) and sites["y"]["logits"] == (4, 32, 65)
