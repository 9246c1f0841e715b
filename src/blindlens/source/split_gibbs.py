"""Exact split-Gibbs source move: a Gaussian data step and an unguided diffusion denoise.

For a fixed lens the source posterior is ``p(s | y) ∝ p(s) N(y; A s, W^-1)`` with diagonal
``W = 1 / sigma_n^2``. Guided reverse diffusions (PiGDM, CLA) approximate the likelihood score of
the *noised* source and are biased (``docs/source_posterior.md``). This move avoids that
approximation by data augmentation with an auxiliary source-sized image ``u``:

``u | s ~ N(s + rho^2 A^T W (y - A s), rho^2 (I - rho^2 A^T W A))``,

valid when ``rho^2 lambda_max(A^T W A) < 1``. Multiplying out, ``p(s) N(y; A s, W^-1) p(u | s)``
is proportional to ``p(s) N(u; s, rho^2 I) h(u)``, so

* the ``s``-marginal of the augmented model is exactly the posterior (``p(u | s)`` integrates to
  one for every ``s``: no bias for any admissible ``rho``, unlike the asymptotically exact split
  Gibbs of Vono et al. 2019, IEEE TSP 67, 1648, whose bias vanishes only as ``rho -> 0``);
* ``s | u`` does not involve the data: it is the posterior of an observation ``u = s + rho z``,
  i.e. a denoising problem the diffusion prior solves with its *unconditional* reverse diffusion
  (only the prior score, no Jacobian, exact in continuous time).

The auxiliary construction is the one of Marnissi et al. (2018, Entropy 20, 110, "An auxiliary
variable method for MCMC algorithms in high dimension"), written here for the denoising form a
diffusion prior can sample. The ``u`` draw needs ``sqrt(I - rho^2 A^T W A) xi``, applied
matrix-free by a Chebyshev expansion (:func:`blindlens.linear_operator.chebyshev_apply`), with
``lambda_max`` from the power method.

**The prior's noise floor.** Well-measured data make ``rho`` (about the best-measured source
direction's posterior sd) smaller than the lowest noise level a network was trained on (the
shipped priors' ``sigma_min`` is 0.005 in image units; a 96x96 lenstronomy lens at peak SNR 74
gives ``rho = 0.0017``). The move therefore samples the source under the prior at its floor,
``p_f = p * N(0, sigma_f^2 I)`` with ``sigma_f = sigma(t_final)``, the distribution the reverse
diffusion reaches before a final Tweedie denoise: ``s | u`` is then the reverse diffusion from
``sqrt(sigma_f^2 + rho^2)`` down to ``sigma_f``, inside the network's range for any ``rho``.

**Cost and mixing.** Per move: ``chebyshev_degree`` products with ``A^T W A`` and as many Heun
steps (two network passes each) as the interval ``log(sqrt(sigma_f^2 + rho^2) / sigma_f)`` needs at
``denoise_step_size`` per step (:func:`denoise_step_count`: one step on well-measured data, where the
interval is a few per cent); the power method (``power_iterations`` products) once per call. The
moves are local: directions the data measure well are redrawn almost independently each move,
prior-dominated ones random-walk in steps of ``rho``. Polishing guided draws brings their
residuals to the true source's level in ~10 moves but does not improve their galaxy-pixel
coverage (``docs/source_posterior.md``); they do not cross between modes.

* :func:`split_gibbs_move` moves a current source (the Gibbs kernel's source move with
  ``BlindLensGibbs(split_gibbs=...)``).
* :func:`sample_source_posterior_split_gibbs` runs chains for a fixed lens from given starts
  (``fixed_lens_posterior(..., polish_moves=K)`` and ``blindlens sample --fixed-lens
  --polish-moves K`` polish guided draws with it).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import Array, Float, Image, PRNGKeyArray, SourceImage
from ..physics.linear_operator import (
    AbstractLinearOperator,
    chebyshev_apply,
    chebyshev_coefficients,
    power_iteration,
)
from ..prior.diffusion_sde import ReverseDiffusion, sample_reverse_diffusion
from ..prior.gaussian_prior import _check_problem, inverse_noise_variance
from ..prior.source_prior import AbstractSourcePrior

__all__ = [
    "SplitGibbsConfig",
    "coupling_sigma",
    "denoise_step_count",
    "floor_sigma",
    "auxiliary_draw",
    "auxiliary_covariance_error",
    "split_gibbs_move",
    "sample_source_posterior_split_gibbs",
]


class SplitGibbsConfig(eqx.Module):
    """Settings of the exact split-Gibbs move (all static: changing one recompiles).

    Parameters
    ----------
    coupling
        ``kappa = rho^2 lambda_max(A^T W A)`` in ``(0, 1)``: larger couples ``u`` to the data more
        tightly (well-measured source directions are redrawn almost independently each move) at a
        larger ``rho`` (more network steps per move). Default 0.8.
    denoise_steps
        Uniform steps of the unconditional reverse diffusion from ``sqrt(sigma_f^2 + rho^2)`` down to
        the floor ``sigma_f = sigma(t_final)`` (no final Tweedie denoise: the move's prior is the
        floored one, see the module docstring): exactly this many with ``denoise_step_size=None``,
        else the most a move takes. Default 64.
    denoise_step_size
        Largest step in ``log sigma`` (uniform steps in diffusion time are uniform in ``log sigma`` for
        the VE SDE's geometric noise schedule): a move takes ``ceil(log(sqrt(sigma_f^2 + rho^2) /
        sigma_f) / denoise_step_size)`` steps, at least 1 and at most ``denoise_steps``
        (:func:`denoise_step_count`). ``None``: always ``denoise_steps``. Default 0.06, measured
        (docs/performance.md, "The split-Gibbs move's cost"): against a 40-step reference on a
        lenstronomy system with the ``highres`` prior, steps of 0.05-0.07 in ``log sigma`` keep the
        denoised pixels' means within the Monte-Carlo error and their variance within 0.8% (variance
        ratio 0.992-1.001 over three systems), 0.12 loses 2% of the variance and 0.35 loses 21%.
    num_moves
        Moves per call of :func:`split_gibbs_move`.
    chebyshev_degree
        Degree of the Chebyshev expansion of ``sqrt(1 - lambda)`` on ``[0, spectrum_bound]``: the
        products with ``A^T W A`` per move. The auxiliary's covariance is then exact to a relative
        :func:`auxiliary_covariance_error` in every eigen-direction: 2.5e-5 at the default 12 (which
        halved the move's products from 24, at 3.7e-9; docs/performance.md), 100x below what the
        exact tests resolve and below the denoise's own error.
    spectrum_bound
        Upper end of the interval on which the expansion is accurate, ``> coupling``: the power
        method's ``lambda_max`` may be low by ``spectrum_bound / coupling`` (12% by default)
        before the expansion leaves its interval.
    power_iterations
        Power-method iterations for ``lambda_max(A^T W A)`` (once per call), started from the all-ones
        image: ``A`` (bilinear ray weights and a non-negative PSF) has non-negative entries, so the
        start overlaps the top eigenvector. Measured on 9 lenstronomy lenses (96x96, supersampling
        3): 8 iterations come within 2.1% of ``lambda_max`` (30 from a random start: 1.1%), inside the
        12% that ``spectrum_bound`` allows.
    t_final
        Last diffusion time of the denoise; sets the prior's noise floor ``sigma(t_final)``.
    solver
        ``"heun"`` (default) or ``"euler"`` for the denoise. Measured on the 16x16 exact test
        (three moves from exact draws, 2000 samples): Heun with 10 steps gives whitened
        chi^2/d 0.9976 against 1 +- 0.0020, Euler needs ~160 steps for the same (0.9920 at 10).
    """

    coupling: float = eqx.field(static=True, default=0.8)
    denoise_steps: int = eqx.field(static=True, default=64)
    num_moves: int = eqx.field(static=True, default=1)
    chebyshev_degree: int = eqx.field(static=True, default=12)
    spectrum_bound: float = eqx.field(static=True, default=0.9)
    power_iterations: int = eqx.field(static=True, default=8)
    t_final: float = eqx.field(static=True, default=1e-3)
    solver: str = eqx.field(static=True, default="heun")
    denoise_step_size: float | None = eqx.field(static=True, default=0.06)

    def __check_init__(self):
        if not 0 < self.coupling < self.spectrum_bound < 1:
            raise ValueError(
                f"need 0 < coupling < spectrum_bound < 1, got coupling={self.coupling}, "
                f"spectrum_bound={self.spectrum_bound}."
            )
        for name in ("denoise_steps", "num_moves", "chebyshev_degree", "power_iterations"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.t_final < 1:
            raise ValueError(f"t_final must be in [0, 1), got {self.t_final}.")
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"solver must be 'euler' or 'heun', got {self.solver!r}.")
        if self.denoise_step_size is not None and not float(self.denoise_step_size) > 0:
            raise ValueError(f"denoise_step_size must be > 0 or None, got {self.denoise_step_size}.")

    @property
    def passes_per_step(self) -> int:
        """Prior-score evaluations per denoise step (Euler: one; Heun: two)."""
        return 2 if self.solver == "heun" else 1

    @property
    def network_passes_per_move(self) -> int:
        """The most prior-score evaluations one move takes (all of them with ``denoise_step_size=None``);
        the count of a move with adaptive steps is known at run time (:func:`split_gibbs_move`'s
        ``with_passes``)."""
        return int(self.denoise_steps) * self.passes_per_step


def _normal_matrix(operator: AbstractLinearOperator, inv_var: Image):
    def matvec(v):
        return operator.adjoint(inv_var * operator(v))

    return matvec


def coupling_sigma(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    inv_var: Image,
    config: SplitGibbsConfig = SplitGibbsConfig(),
) -> Float[Array, ""]:
    """The auxiliary noise level ``rho = sqrt(coupling / lambda_max(A^T W A))``, image units.

    ``lambda_max`` by ``config.power_iterations`` power iterations from the all-ones image (a lower
    bound, see :class:`SplitGibbsConfig`); ``key`` is not used (the start is deterministic since
    the all-ones start replaced a random one) and stays for existing callers. Capped at 0.99 of the
    prior's ``sigma_max`` (a smaller ``rho`` stays exact).
    """
    del key
    start = jnp.ones(operator.source_shape, inv_var.dtype)
    lam = power_iteration(_normal_matrix(operator, inv_var), start, config.power_iterations)
    rho = jnp.sqrt(config.coupling / jnp.maximum(lam, jnp.finfo(inv_var.dtype).tiny))
    return jnp.minimum(rho, 0.99 * prior.sde.sigma_max)


def _sqrt_coefficients(config: SplitGibbsConfig):
    return chebyshev_coefficients(
        lambda lam: np.sqrt(np.clip(1.0 - lam, 0.0, None)), 0.0, config.spectrum_bound, config.chebyshev_degree
    )


def auxiliary_covariance_error(config: SplitGibbsConfig = SplitGibbsConfig()) -> float:
    """Largest relative error of the auxiliary draw's covariance over ``[0, spectrum_bound]``.

    The draw's noise is ``rho p(M) xi`` with ``p`` the Chebyshev interpolant of ``sqrt(1 - lambda)``,
    so its covariance in the eigen-direction of ``M = rho^2 A^T W A`` with eigenvalue ``lambda`` is
    ``rho^2 p(lambda)^2`` instead of ``rho^2 (1 - lambda)``: this returns
    ``max |p^2 - (1 - lambda)| / (1 - lambda)`` on a fine grid of the interval (float64), a bound that
    holds for any operator whose spectrum the power method placed inside it.
    """
    lam = np.linspace(0.0, float(config.spectrum_bound), 20001)
    scaled = (2.0 * lam - config.spectrum_bound) / config.spectrum_bound
    p = np.polynomial.chebyshev.chebval(scaled, np.asarray(_sqrt_coefficients(config)))
    return float(np.max(np.abs(p**2 - (1.0 - lam)) / (1.0 - lam)))


def auxiliary_draw(
    key: PRNGKeyArray,
    operator: AbstractLinearOperator,
    data: Image,
    inv_var: Image,
    current: SourceImage,
    rho: Float[Array, ""],
    config: SplitGibbsConfig = SplitGibbsConfig(),
) -> SourceImage:
    """Draw ``u ~ N(s + rho^2 A^T W (y - A s), rho^2 (I - rho^2 A^T W A))`` (the data step).

    The covariance square root is applied to white noise by the Chebyshev expansion of
    ``sqrt(1 - lambda)`` in ``M = rho^2 A^T W A`` on ``[0, spectrum_bound]``.
    """
    normal = _normal_matrix(operator, inv_var)
    coeffs = _sqrt_coefficients(config)
    xi = jr.normal(key, current.shape, current.dtype)
    colour = chebyshev_apply(lambda v: rho**2 * normal(v), xi, coeffs, 0.0, config.spectrum_bound)
    return current + rho**2 * operator.adjoint(inv_var * (data - operator(current))) + rho * colour


def _prior_score(x, t, args):
    return args.score(x, t)


def floor_sigma(prior: AbstractSourcePrior, config: SplitGibbsConfig) -> float:
    """The prior's noise floor ``sigma(t_final)``: the move samples the source under ``p * N(0, floor^2 I)``."""
    return float(prior.sde.sigma(config.t_final))


def denoise_step_count(prior: AbstractSourcePrior, rho: Float[Array, ""], config: SplitGibbsConfig) -> Array:
    """Denoise steps of one move at auxiliary noise ``rho`` (an int32 scalar, traced).

    ``ceil(log(sqrt(sigma_f^2 + rho^2) / sigma_f) / denoise_step_size)`` clipped to
    ``[1, denoise_steps]``; ``denoise_steps`` itself when ``denoise_step_size`` is ``None``.
    """
    if config.denoise_step_size is None:
        return jnp.asarray(int(config.denoise_steps), jnp.int32)
    floor = floor_sigma(prior, config)
    log_ratio = 0.5 * jnp.log1p((rho / floor) ** 2)
    steps = jnp.ceil(log_ratio / float(config.denoise_step_size))
    return jnp.clip(steps, 1, int(config.denoise_steps)).astype(jnp.int32)


def _denoise_from(key, prior: AbstractSourcePrior, u, rho, config: SplitGibbsConfig):
    """Draw ``x_f ~ p_f(x | x + rho z = u)`` for the floored prior ``p_f = p * N(0, sigma_f^2 I)``.

    ``u`` is the forward diffusion of ``x_0 ~ p`` at level ``sqrt(sigma_f^2 + rho^2)``, and ``x_f`` its
    state at ``sigma_f``: the reverse diffusion between the two levels, with no final denoise. Both
    levels lie inside the network's noise range even when ``rho`` is far below its ``sigma_min``
    (well-measured data), where a reverse diffusion from ``rho`` itself would need the score
    below the smallest noise level the network was trained on. Returns ``(x_f, steps)``.
    """
    sde = prior.sde
    floor = floor_sigma(prior, config)
    start = jnp.sqrt(floor**2 + rho**2)
    t_start = jnp.minimum(sde.time_at_sigma(start), 1.0)
    steps = denoise_step_count(prior, rho, config)
    if config.denoise_step_size is None:
        x = sample_reverse_diffusion(
            key,
            sde,
            _prior_score,
            prior.shape,
            args=prior,
            num_steps=config.denoise_steps,
            t_final=config.t_final,
            t_start=t_start,
            x_init=u,
            solver=config.solver,
            denoise=False,
        )
        return x, steps
    integrator = ReverseDiffusion(sde, _prior_score, tuple(prior.shape), config.solver)
    span = t_start - config.t_final

    def step(i, x):  # uniform times from t_start down to t_final, as many steps as the interval needs
        t0 = config.t_final + span * (1.0 - i / steps)
        t1 = config.t_final + span * (1.0 - (i + 1) / steps)
        return integrator.step(jr.fold_in(key, i), x, t0, t1, prior)

    return jax.lax.fori_loop(0, steps, step, u), steps


def _moves_at(key, prior, operator, data, inv_var, current, rho, num_moves: int, config: SplitGibbsConfig):
    """``num_moves`` moves at a given ``rho``: ``(source, network passes)``."""

    def one(x, k):
        k_u, k_s = jr.split(k)
        u = auxiliary_draw(k_u, operator, data, inv_var, x, rho, config)
        x, steps = _denoise_from(k_s, prior, u, rho, config)
        return x, steps

    x, steps = jax.lax.scan(one, current, jr.split(key, int(num_moves)))
    return x, jnp.sum(steps) * config.passes_per_step


def _moves(key, prior, operator, data, inv_var, current, config: SplitGibbsConfig):
    k_rho, k_moves = jr.split(key)
    rho = coupling_sigma(k_rho, prior, operator, inv_var, config)
    return _moves_at(k_moves, prior, operator, data, inv_var, current, rho, config.num_moves, config)


def split_gibbs_move(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    current: SourceImage,
    config: SplitGibbsConfig = SplitGibbsConfig(),
    *,
    with_passes: bool = False,
) -> SourceImage | tuple[SourceImage, Array]:
    """``config.num_moves`` exact split-Gibbs moves of the source for a fixed lens.

    A Markov move that leaves ``p(s | y, A)`` invariant (exactly, with an exact prior score and
    a fine enough denoise; see the module docstring). Pure and jit-compatible.

    Parameters
    ----------
    key
        PRNG key.
    prior
        Source prior (noised score in image units).
    operator
        Linear forward model ``A`` for the fixed lens.
    data
        Observed image ``(ny, nx)``.
    noise_sigma
        Noise standard deviation, scalar or ``(ny, nx)``; ``inf`` masks a pixel.
    current
        The current source ``(sy, sx)``, image units.
    config
        Move settings.
    with_passes
        Also return the network passes the moves took (an int32 scalar: the denoise's step
        count follows ``rho``, so it is known at run time only).

    Returns
    -------
    The moved source ``(sy, sx)``, with ``with_passes`` the pair ``(source, passes)``.
    """
    _check_problem(prior.shape, operator, data)
    data = jnp.asarray(data)
    w = inverse_noise_variance(noise_sigma, operator.image_shape, operator).astype(data.dtype)
    source, passes = _moves(key, prior, operator, data, w, jnp.asarray(current, data.dtype), config)
    return (source, passes) if with_passes else source


def check_chain_inputs(prior, operator, data, init, num_samples, burn_in, thin) -> Array:
    """Validate a fixed-lens chain sampler's problem, starts and lengths; return the starts as an array."""
    init = jnp.asarray(init)
    if init.ndim != 3 or tuple(init.shape[1:]) != tuple(prior.shape):
        raise ValueError(
            f"init must have shape (num_chains, {prior.shape[0]}, {prior.shape[1]}), got {tuple(init.shape)}; "
            "stack one starting source per chain."
        )
    for name, value, low in (("num_samples", num_samples, 1), ("burn_in", burn_in, 0), ("thin", thin, 1)):
        if int(value) < low:
            raise ValueError(f"{name} must be >= {low}, got {value}.")
    _check_problem(prior.shape, operator, data)
    return init


@eqx.filter_jit
def _chains(keys, prior, operator, data, w, init, config, num_samples, thin):
    # one operator, one rho: the power method runs once per call, not once per kept state
    rho = coupling_sigma(jr.fold_in(keys[0], 1), prior, operator, w, config)

    def chain(key, x):
        def draw(x, k):
            x = _moves_at(k, prior, operator, data, w, x, rho, thin, config)[0]
            return x, x

        _, xs = jax.lax.scan(draw, x, jr.split(key, num_samples))
        return xs

    return jax.vmap(chain)(keys, init)


def sample_source_posterior_split_gibbs(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    init: Float[Array, "num_chains sy sx"],
    *,
    num_samples: int,
    burn_in: int = 20,
    thin: int = 1,
    config: SplitGibbsConfig = SplitGibbsConfig(),
) -> Float[Array, "num_chains num_samples sy sx"]:
    """Run one split-Gibbs chain per starting source and keep every ``thin``-th state.

    Chain ``i`` uses ``jax.random.split(key, num_chains)[i]``. Start the chains near the posterior
    (e.g. from :func:`blindlens.source_posterior.sample_source_posterior` draws) and discard a
    burn-in; successive states are correlated, so compare chains (R-hat) before trusting
    intervals.

    Parameters
    ----------
    key, prior, operator, data, noise_sigma
        As for :func:`split_gibbs_move`.
    init
        Starting sources, ``(num_chains, sy, sx)``.
    num_samples
        Kept states per chain.
    burn_in
        Moves discarded before the first kept state.
    thin
        Moves between kept states.
    config
        Move settings (its ``num_moves`` is ignored).

    Returns
    -------
    States ``(num_chains, num_samples, sy, sx)`` in image units.
    """
    init = check_chain_inputs(prior, operator, data, init, num_samples, burn_in, thin)
    data = jnp.asarray(data)
    w = inverse_noise_variance(noise_sigma, operator.image_shape, operator).astype(data.dtype)
    k_burn, k_keep = jr.split(key)
    keys_burn = jr.split(k_burn, init.shape[0])
    keys_keep = jr.split(k_keep, init.shape[0])
    start = init.astype(data.dtype)
    if int(burn_in) > 0:
        start = _chains(keys_burn, prior, operator, data, w, start, config, 1, int(burn_in))[:, -1]
    return _chains(keys_keep, prior, operator, data, w, start, config, int(num_samples), int(thin))

