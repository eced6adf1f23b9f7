"""``SMILE``: auto-tuned (stochastic-gradient) MCLMC as a NumPyro ``MCMCKernel``, on the
adapter every kernel of the package shares (:class:`KernelAdapter`).

A thin adapter: it finds the model's subsample plates, builds the sampler core
(:func:`numpyro_smile.sampler.build_kernel`) for them and maps NumPyro's ``init``/``sample``
onto the core's ``init``/``step``. A subsample plate gives SMILE (pSMILE by default), no
subsample plate full-batch MCLMC with MILE's tuning, ``adapt=False`` the naive variants.

Example::

    mcmc = MCMC(SMILE(model), num_warmup=2000, num_samples=1000, num_chains=4,
                chain_method="vectorized")
    mcmc.run(jax.random.key(0), X, y)
    idata = arviz.from_numpyro(mcmc)   # log_likelihood over all N data points
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
from jax.flatten_util import ravel_pytree
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import identity, is_prng_key

from numpyro_smile import batching, convergence, diagnostics, model_views, sampler, targets
from numpyro_smile.config import SMILEConfig
from numpyro_smile.runtime import Progress
from numpyro_smile.sampler import SMILEState
from numpyro_smile.targets import DEFAULT_INIT_STRATEGY

__all__ = ["DEFAULT_INIT_STRATEGY", "SMILE", "KernelAdapter", "SMILEState"]


class KernelAdapter(MCMCKernel):
    """NumPyro's ``MCMCKernel`` protocol over a functional core: what every kernel of the
    package shares (:class:`SMILE`, :class:`~numpyro_smile.SGLD`, :class:`~numpyro_smile.SGHMC`,
    :class:`~numpyro_smile.AdaSGHMC`).

    It checks the model and its data (the error catalogue of
    :mod:`numpyro_smile.model_views`), finds the subsample plates, initialises the model (or
    checks ``init_params``), builds the core's :class:`~numpyro_smile.sampler.Target` from the
    traced model arguments at every step, maps ``init``/``sample`` onto the core's
    ``init``/``step`` for one chain or ``chain_method="vectorized"``, constrains the draws
    (deterministic sites over the full data) and exposes the full-data view of the model that
    ``az.from_numpyro`` reads. A subclass only says which core to build
    (:meth:`build_core`), how it describes itself (:attr:`mode`) and what its guardrail
    resets by design (:attr:`expected_reset_rate`).
    """

    sample_field = "z"
    #: The kernel's name in messages.
    name = "kernel"
    #: Whether the core needs d >= 2 (MCLMC: the velocity lives on the sphere S^(d-1)); a
    #: one-dimensional model then gets an independent N(0, 1) auxiliary coordinate.
    needs_two_dimensions = False

    def __init__(
        self,
        model: Callable | None,
        potential_fn: Callable | None,
        *,
        init_strategy: Callable,
        verbose: bool | None,
        data_size: int | None,
        subsample_size: int | None,
    ) -> None:
        if (model is None) == (potential_fn is None):
            raise ValueError(
                "Pass exactly one of `model` (a NumPyro model) or `potential_fn` (a function "
                "z -> potential energy); got " + ("both." if model is not None else "neither.")
            )
        self._model = model
        self._potential_fn = potential_fn
        self._init_strategy = init_strategy
        self._verbose = verbose
        # potential_fn mode: the plate it declares; model mode: found at init.
        self._plates = targets.potential_plates(model, data_size, subsample_size)
        self._core: Any = None
        self._postprocess_fn_gen = None
        self._sample_fn: Callable | None = None
        self._vectorized = False
        self._auxiliary = False
        # Names of the coordinates the end-of-warmup check watches (set at init).
        self._watched_names: tuple[str, ...] = ()

    # ------------------------------------------------------------------ what subclasses say

    def build_core(
        self,
        plates: dict,
        num_warmup: int,
        dim: int,
        num_chains: int | None,
        fixed_start: bool,
        *,
        members: bool = False,
    ) -> Any:
        """The core (``init``, ``step``, ``plan``) for these plates and ``dim`` flat
        parameters; ``fixed_start``: the chains start from given ``init_params``;
        ``members``: the chains are an ensemble's members, run by a driver that checks the
        end of warmup itself (:data:`numpyro_smile.sampler.MEMBERS_CHECK`)."""
        raise NotImplementedError

    @property
    def mode(self) -> str:
        """The variant that runs, in words."""
        raise NotImplementedError

    @property
    def expected_reset_rate(self) -> float:
        """Share of steps the guardrail resets by design."""
        raise NotImplementedError

    def _work(self, plan: Any) -> str:
        """Extra work ``init`` does, for the status line (e.g. pretraining)."""
        return ""

    # ------------------------------------------------------------------ shared

    @property
    def model(self) -> Callable | None:
        """A full-data view of the model (every subsample plate sees all N points), which
        ``az.from_numpyro`` reads for ``log_likelihood`` and ``observed_data``."""
        if self._model is None or not self._plates:
            return self._model
        return model_views.full_data_model(self._model, self._plates)

    @property
    def subsample_plates(self) -> dict[str, batching.PlateInfo]:
        """``{name: PlateInfo(N, B)}`` found at ``init`` (empty: full-batch mode)."""
        return dict(self._plates)

    @property
    def plan(self) -> Any:
        """The core's plan (known after ``init``)."""
        return None if self._core is None else self._core.plan

    @property
    def is_ensemble_kernel(self) -> bool:
        """True after a vectorized ``init``: the state then holds a single ``rng_key``."""
        return self._vectorized

    def init(
        self,
        rng_key: jax.Array,
        num_warmup: int,
        init_params: dict | None = None,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
    ) -> Any:
        """Check the model, build the core and the initial state of every chain.

        Called by ``MCMC``: with a single key for one chain (``sequential``/``parallel``), or
        with ``(num_chains,)`` keys for ``chain_method="vectorized"``, where the returned
        state batches every field except ``rng_key``.
        """
        self._vectorized = not is_prng_key(rng_key)
        num_chains = rng_key.shape[0] if self._vectorized else None
        first_key = rng_key[0] if self._vectorized else rng_key
        model_kwargs = dict(model_kwargs or {})
        fixed_start = init_params is not None
        if self._model is not None:
            init_params = self._init_model(
                rng_key, first_key, init_params, model_args, model_kwargs
            )
        elif init_params is None:
            raise ValueError(f"{self.name}(potential_fn=...) needs init_params in mcmc.run(...).")

        single = jax.tree.map(lambda a: a[0], init_params) if self._vectorized else init_params
        self._auxiliary = (
            self.needs_two_dimensions
            and ravel_pytree(single)[0].shape[0] == 1
            and isinstance(single, dict)
        )
        if self._auxiliary:  # the velocity needs d >= 2: add an independent N(0, 1) coordinate
            init_params = targets.add_auxiliary_site(init_params, num_chains)
            single = jax.tree.map(lambda a: a[0], init_params) if self._vectorized else init_params
        flat, unravel = ravel_pytree(single)
        watched = convergence.monitored_indices(flat.shape[0])
        self._watched_names = targets.coordinate_names(single, watched)
        self._core = core = self.build_core(
            self._plates, num_warmup, flat.shape[0], num_chains, fixed_start
        )
        chains = f"{num_chains} chains" if num_chains else "a chain"
        Progress(self._verbose).status(
            f"{self.name}: {core.plan.mode}; compiling, initialising {chains}"
            f"{self._work(core.plan)}"
        )
        if self._model is not None:
            potential_gen = self._potential_fn_gen

            def base_target(unravel, args, kwargs):
                return targets.model_target(
                    self._model, potential_gen, self._plates, unravel, args, kwargs
                )

        else:

            def base_target(unravel, args, kwargs):
                return targets.potential_target(self._potential_fn, self._plates, unravel)

        def target_fn(args, kwargs):
            if self._auxiliary:
                return targets.with_auxiliary_site(
                    partial(base_target, args=args, kwargs=kwargs), unravel
                )
            return base_target(unravel, args, kwargs)

        def init_chain(z, key):
            return core.init(ravel_pytree(z)[0], key, target_fn(model_args, model_kwargs))

        key_state, key_chains = jax.random.split(first_key)
        if self._vectorized:
            init_chain = jax.vmap(init_chain)
            key_chains = jax.random.split(key_chains, num_chains)
        # One compiled call (eager vmap would dispatch and compile every primitive separately).
        state = jax.jit(init_chain)(init_params, key_chains)
        if self._model is not None:
            targets.check_smooth_likelihood(
                self._model, self._plates, flat, unravel, model_args, model_kwargs
            )
        if fixed_start:
            targets.check_start(
                self._model,
                self._plates,
                init_params,
                state.potential_energy,
                num_chains,
                model_args,
                model_kwargs,
                key_state,
            )
        init_shapes = targets.argument_shapes(model_args, model_kwargs)

        def sample_fn(state, model_args, model_kwargs):
            targets.check_same_shapes(
                init_shapes, targets.argument_shapes(model_args, model_kwargs)
            )
            return core.step(state, target_fn(model_args, model_kwargs))

        # NumPyro's MCMC re-runs `init` on every `run` unless the kernel has a `_sample_fn`.
        self._sample_fn = sample_fn
        return state._replace(rng_key=key_state)

    def sample(self, state: Any, model_args: tuple, model_kwargs: dict) -> Any:
        """One transition of every chain in ``state``."""
        assert self._sample_fn is not None, "`init` must be called before `sample`."
        return self._sample_fn(state, model_args, model_kwargs)

    def postprocess_fn(self, model_args: tuple, model_kwargs: dict) -> Callable:
        """Constrain ``z`` (and replay deterministic sites, over the full data); a
        one-dimensional model's auxiliary coordinate is dropped."""
        drop = targets.drop_auxiliary_site if self._auxiliary else identity
        if self._postprocess_fn_gen is None:
            return drop
        indices = batching.full_data_indices(self._plates)
        kwargs = targets.with_indices(model_kwargs, indices)
        constrain = self._postprocess_fn_gen(*model_args, **kwargs)
        return lambda z: constrain(drop(z))

    def get_diagnostics_str(self, state: Any) -> str:
        """Progress-bar text: the variant, the mean step size, and the resets next to what the
        guardrail resets by design, so that a healthy run reads as one."""
        return diagnostics.status_text(self.mode, self.expected_reset_rate, state)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_core=None, _sample_fn=None, _postprocess_fn_gen=None, _potential_fn_gen=None)
        return state

    def _init_model(self, rng_key, first_key, init_params, model_args, model_kwargs) -> dict:
        """Check the model and its data; NumPyro's potential and transforms; the initial
        points (the init strategy's, or ``init_params`` checked against the latent sites)."""
        if model_views.SUBSAMPLE_KWARG in model_kwargs:
            raise ValueError(
                f"{model_views.SUBSAMPLE_KWARG!r} is a reserved keyword of {self.name}."
            )
        model_views.check_finite_data(model_args, model_kwargs)
        self._plates = model_views.inspect_model(self._model, model_args, model_kwargs)
        init_keys = rng_key if (self._vectorized and init_params is None) else first_key
        info = model_views.initialize_subsampled_model(
            init_keys,
            self._model,
            self._plates,
            self._init_strategy,
            model_args,
            model_kwargs,
            shapes_only=init_params is not None,
        )
        self._potential_fn_gen = info.potential_fn
        self._postprocess_fn_gen = info.postprocess_fn
        if init_params is None:
            return info.param_info.z
        num_chains = rng_key.shape[0] if self._vectorized else None
        targets.check_init_params(init_params, info.param_info.z, num_chains)
        return init_params


class SMILE(KernelAdapter):
    """Auto-tuned microcanonical Langevin sampler, mini-batched when the model subsamples.

    Args:
        model: a NumPyro model. Mark the likelihood with
            ``numpyro.plate(name, N, subsample_size=B)`` (and ``numpyro.subsample`` the data)
            for SMILE; without a subsample plate the kernel runs full-batch MCLMC (MILE).
        potential_fn: alternatively, ``z -> U(z)`` (full batch) or, with ``data_size`` and
            ``subsample_size``, ``(z, batch_indices) -> U_B(z)``, an unbiased mini-batch
            estimate of the full potential. Requires ``init_params`` in ``mcmc.run``.
        config: a :class:`~numpyro_smile.SMILEConfig`; or give its settings as keywords
            (``step_size=``, ``precondition=``, ``adapt=``, ``desired_energy_var=``, ...:
            see :class:`~numpyro_smile.SMILEConfig` for each). ``desired_energy_var=None``
            here means BlackJAX's 5e-4, for moments as accurate as NUTS's.
        init_strategy: NumPyro init strategy when ``init_params`` is not given (default
            ``init_to_uniform(radius=0.5)``: see ``DEFAULT_INIT_STRATEGY``).
        verbose: one line at ``init`` saying which variant runs and that it compiles (the
            wait before NumPyro's progress bar); ``None``: on a terminal, never under ``$CI``.
        data_size: with ``potential_fn`` only: N, the number of data points.
        subsample_size: with ``potential_fn`` only: B, the mini-batch size of the potential.
    """

    default_fields = ("z", "diverging", "energy_change", "step_size", "L", "potential_energy")
    name = "SMILE"
    needs_two_dimensions = True

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        *,
        config: SMILEConfig | None = None,
        init_strategy: Callable = DEFAULT_INIT_STRATEGY,
        verbose: bool | None = None,
        data_size: int | None = None,
        subsample_size: int | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(
            model,
            potential_fn,
            init_strategy=init_strategy,
            verbose=verbose,
            data_size=data_size,
            subsample_size=subsample_size,
        )
        self.config = SMILEConfig.with_settings(config, settings, "SMILE")

    @property
    def plan(self) -> sampler.Plan | None:
        """The core's :class:`~numpyro_smile.sampler.Plan` (known after ``init``)."""
        return None if self._core is None else self._core.plan

    @property
    def preconditioned(self) -> bool:
        """Whether the preconditioner is used (``precondition=None``: on mini-batches only)."""
        return sampler.preconditioned(self.config, self._plates)

    @property
    def expected_reset_rate(self) -> float:
        """Share of steps the guardrail resets by design (see ``Plan.expected_reset_rate``)."""
        return sampler.expected_reset_rate(self.config, self._plates)

    @property
    def mode(self) -> str:
        """The variant that runs, in words (known after ``init``): e.g. ``"pSMILE, B=256 of
        N=10000"`` on mini-batches, ``"MILE, full batch"`` without a subsample plate."""
        return sampler.describe(self.config, self._plates, self.preconditioned)

    def build_core(
        self,
        plates: dict,
        num_warmup: int,
        dim: int,
        num_chains: int | None,
        fixed_start: bool,
        *,
        members: bool = False,
    ) -> sampler.SMILEKernel:
        """MCLMC's core; pretraining moves chains that start from the init strategy, never
        user ``init_params``."""
        config = self.config.replace(pretrain_steps=0) if fixed_start else self.config
        plan = sampler.make_plan(config, plates, num_warmup, dim)
        if members:
            check = sampler.MEMBERS_CHECK
        else:
            check = sampler.WarmupCheck(site_names=self._watched_names)
        return sampler.build_kernel(plan, num_chains, check)

    def _work(self, plan: sampler.Plan) -> str:
        steps = plan.config.pretrain_steps
        return f", pretraining {steps} Adam steps" if steps else ""
