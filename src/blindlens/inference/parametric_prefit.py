"""Find the lens's basin first with a parametric source: a multi-start Sérsic pre-fit.

Blind lensing with a free-form source is multi-modal: a wrong lens with a contorted source can
fit the arcs (issue 14: chains at ``theta_E`` 0.38 and 2.76 for true 1.01 and 1.54, residual
chi^2/N 2.8-4.3), and a Gaussian-source evidence even prefers large Einstein radii whose source
reproduces the arcs themselves (docs/joint_inference.md). The standard lens-modelling workflow
(Birrer & Amara 2018, lenstronomy; Shajib et al. 2019) therefore finds the lens with a *compact
parametric* source first: an elliptical Sérsic cannot co-adapt with a wrong lens, so the
residual chi^2 of the best Sérsic fit is a proper criterion for ranking lens basins.

:func:`prefit_lens_with_sersic` runs ``num_starts`` Adam optimisations in parallel
(``jax.vmap``), each from a draw of the user's NumPyro lens prior, of

    log p(theta) - chi^2(theta, q) / 2 + log p(q),    chi^2 = sum_unmasked ((y - a B_{theta,q}) / sigma)^2,

over the lens ``theta`` (NumPyro's unconstrained space) and the Sérsic shape ``q`` (``R_sersic``,
``n_sersic``, ``e1``, ``e2``, ``center_x``, ``center_y``), with the amplitude ``a >= 0`` solved
in closed form (weighted least squares) for each ``(theta, q)``. ``B`` is the unit-amplitude
Sérsic ray-traced through the lens at ``supersampling^2`` rays per pixel, averaged and convolved
with the PSF, like the pixelated operator (:mod:`blindlens.lensing_operator`); the multi-start
search itself may trace fewer (``search_supersampling``), since it only has to find the basin that
the refinement and the ranking then judge at ``supersampling``. The runs are ranked by chi^2;
:meth:`~blindlens.gibbs_kernel.BlindLensGibbs` starts the continuous-time warm starts from the
best ones (:mod:`blindlens.chain_starts`).

A share of the starts (``robust_fraction``, half by default) fit the Sérsic stage with a Cauchy
loss, ``sum c^2 log(1 + r^2 / c^2)`` over the whitened residuals ``r`` (``c = robust_scale``,
3 sigma), instead of the chi^2: a source with many compact knots (a clumpy star-forming galaxy)
puts light where no single Sérsic can, and under the chi^2 every start's lens moves to draw the
brightest knots (lenstronomy system 19 of the cold-start study: theta_E 2.14 for 0.91 from all 48
starts), while under the Cauchy loss those pixels cost a few nats each and the Sérsic fits the
smooth part that carries the lens (theta_E 0.915 there). The two groups are ranked each by its
own loss, the refinement takes the best of both in turn, and the refined runs are ranked together
by their chi^2 (Holland & Welsch 1977 for the reweighted least squares of the amplitudes).

Nuisance sites of the lens model (the source grid's placement of ``--source-shift sampled``,
:func:`~blindlens.numpyro_model.nuisance_site_names`) are left out of the fit, since a constant
deflection only moves the Sérsic's centre, and reported at 0 in the runs. (Fitted, they cost the
pre-fit its basin on a lenstronomy system: best chi^2/N 15.6 against 11.2 without them.)

The Sérsic profile follows lenstronomy's ``SERSIC_ELLIPSE`` (``I = amp exp(-b_n ((R /
R_sersic)^(1/n) - 1))``, ``b_n = 1.9992 n - 0.3271``, ``R`` the product-average elliptical radius
of ``e1, e2``), tested against lenstronomy.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._optimisers import adam_maximise
from .._types import Array, Float, PRNGKeyArray
from ..physics.light_profiles import sersic_ellipse

__all__ = ["SersicImager", "SersicPrefitConfig", "SersicPrefitResult", "prefit_lens_with_sersic", "sersic_ellipse"]

SOURCE_NAMES = ("R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y")
"""The Sérsic shape parameters of the pre-fit (lenstronomy names; the amplitude is solved for)."""


class SersicPrefitConfig(eqx.Module):
    """Settings of :func:`prefit_lens_with_sersic` (all static).

    Attributes
    ----------
    num_starts
        Parallel Adam runs, each from a draw of the lens prior and a round Sérsic at the field's centre.
    num_steps
        Adam steps per run.
    learning_rate
        Initial Adam step (unconstrained units), cosine-decayed to zero.
    supersampling
        Rays per image pixel per axis for the refinement's images and the chi^2 the runs are
        ranked by.
    search_supersampling
        Rays per image pixel per axis in the Sérsic stage (the multi-start search, most of the
        pre-fit's cost); ``None`` (default): ``supersampling``. At 1 the pre-fit takes 1.6x less
        time and finds the same basins on the lenstronomy systems measured, but with jax 0.12 it
        loses the knotty test source's lens (docs/performance.md, "The pre-fit's search at one ray
        per pixel"), so it is an option, not the default.
    source_offset
        Prior sd of the Sérsic centre from the image centre [arcsec] (starts are drawn from it).
    refine_runs
        The best runs of the Sérsic-only stage that are refined with shapelets (0: no refinement).
    shapelet_order
        ``n_max`` of the Cartesian shapelets added to the Sérsic in the refinement
        (``(n_max + 1)(n_max + 2) / 2`` linear components, Refregier 2003), centred on the Sérsic,
        with their scale ``beta`` optimised.
    refine_steps
        Adam steps of the refinement.
    mass_light_offset
        With deflector light in the lens model: the sd [arcsec] of a Gaussian tie of the mass
        centre (``center_x, center_y``) to the light's (``lens_light_center_x, ...``) in the
        pre-fit's objective, and the mass centre starts at the fitted light's. Stellar light
        traces the mass centre to a few 0.01" in galaxy-scale lenses, while a parametric source
        too simple for the arcs lets the mass centre drift (0.12" on the bundled HST example,
        whose light the fit places within 0.001"). Only the pre-fit uses it; the chains sample the
        user's prior. ``0`` switches it off.
    tied_fraction
        With that tie: the fraction of the starts whose Sérsic stage holds the mass centre on the
        light's (one shared centre, as ``--tie-light-center`` does) instead; every run is then
        refined with the weak tie and all are ranked together by chi^2. The weak tie is a few
        nats against a chi^2 of 10^4-10^5, so while the Sérsic source is wrong it does not keep the
        mass near the light: on a compact lenstronomy system (theta_E 0.83") every free start ended
        0.2" off at chi^2/N >= 16.1, where starts held on the light reach 10.4 (docs/real_data.md).
    robust_fraction
        The share of the starts (spread evenly, run 0 excluded below 1) whose Sérsic stage
        minimises the Cauchy loss of scale ``robust_scale`` instead of the chi^2 (module
        docstring); ``0`` switches it off.
    robust_scale
        The Cauchy loss's scale ``c`` [noise sd]: residuals well below it count as in the chi^2,
        those above it logarithmically.
    """

    num_starts: int = eqx.field(static=True, default=48)
    num_steps: int = eqx.field(static=True, default=300)
    learning_rate: float = eqx.field(static=True, default=0.05)
    supersampling: int = eqx.field(static=True, default=2)
    search_supersampling: int | None = eqx.field(static=True, default=None)
    source_offset: float = eqx.field(static=True, default=0.3)
    refine_runs: int = eqx.field(static=True, default=8)
    shapelet_order: int = eqx.field(static=True, default=6)
    refine_steps: int = eqx.field(static=True, default=300)
    mass_light_offset: float = eqx.field(static=True, default=0.05)
    tied_fraction: float = eqx.field(static=True, default=0.5)
    robust_fraction: float = eqx.field(static=True, default=0.5)
    robust_scale: float = eqx.field(static=True, default=3.0)

    @property
    def num_robust(self) -> int:
        """How many starts fit the Sérsic stage on the Cauchy loss: ``floor(robust_fraction num_starts)``."""
        return int(self.robust_fraction * self.num_starts + 1e-9)

    def __check_init__(self):
        if self.num_starts < 1 or self.num_steps < 0 or self.supersampling < 1:
            raise ValueError("SersicPrefitConfig needs num_starts >= 1, num_steps >= 0 and supersampling >= 1.")
        if self.search_supersampling is not None and self.search_supersampling < 1:
            raise ValueError("SersicPrefitConfig search_supersampling must be >= 1 (or None: supersampling's).")
        if not self.learning_rate > 0 or not self.source_offset > 0:
            raise ValueError("SersicPrefitConfig learning_rate and source_offset must be > 0.")
        if not self.mass_light_offset >= 0:
            raise ValueError("SersicPrefitConfig mass_light_offset must be >= 0 (0 switches the tie off).")
        if not 0.0 <= self.tied_fraction <= 1.0:
            raise ValueError("SersicPrefitConfig tied_fraction must be in [0, 1].")
        if not 0.0 <= self.robust_fraction <= 1.0 or not self.robust_scale > 0:
            raise ValueError("SersicPrefitConfig robust_fraction must be in [0, 1] and robust_scale > 0.")
        if self.refine_runs < 0 or self.shapelet_order < 0 or self.refine_steps < 0:
            raise ValueError("SersicPrefitConfig refine_runs, shapelet_order and refine_steps must be >= 0.")


class SersicPrefitResult(NamedTuple):
    """Outcome of :func:`prefit_lens_with_sersic`, runs sorted by chi^2 (best first; the refined runs
    ahead of the others, each part ascending).

    Attributes
    ----------
    lens
        Constrained lens values of the best run (site name -> scalar).
    chi2
        Residual chi^2 of every run (the Gaussian chi^2 also for the Cauchy-stage runs), ``(num_starts,)``.
    runs
        Constrained lens values of every run (site name -> ``(num_starts,)``), in the order of ``chi2``.
    source
        Sérsic parameters of every run (``amp`` and :data:`SOURCE_NAMES` -> ``(num_starts,)``).
    num_pixels
        Unmasked pixels (``chi2 / num_pixels`` is the reduced chi^2).
    num_refined
        The first ``num_refined`` runs were refined with shapelets (their ``chi2`` is of the
        Sérsic + shapelet fit; ``source`` keeps their Sérsic part).
    """

    lens: dict
    chi2: Float[Array, " runs"]
    runs: dict
    source: dict
    num_pixels: int
    num_refined: int = 0


def shapelets(x, y, n_max: int, beta, center_x=0.0, center_y=0.0) -> Float[Array, "k ..."]:
    """Cartesian shapelets ``phi_{n1}(dx / beta) phi_{n2}(dy / beta) / beta`` for ``n1 + n2 <= n_max``.

    ``phi_n(u) = (2^n sqrt(pi) n!)^(-1/2) H_n(u) exp(-u^2 / 2)`` (Refregier 2003, MNRAS 338, 35),
    computed by the stable three-term recurrence of the normalised functions; each 2-D function
    has unit L2 norm [1/arcsec]. Returned stacked on a leading axis in the order of increasing
    ``n1 + n2``, then ``n1``.
    """
    def one_d(u):
        out = [jnp.pi**-0.25 * jnp.exp(-0.5 * u**2)]
        if n_max >= 1:
            out.append(jnp.sqrt(2.0) * u * out[0])
        for n in range(1, n_max):
            out.append(jnp.sqrt(2.0 / (n + 1)) * u * out[n] - jnp.sqrt(n / (n + 1)) * out[n - 1])
        return out

    px, py = one_d((x - center_x) / beta), one_d((y - center_y) / beta)
    return jnp.stack([px[n1] * py[n - n1] / beta for n in range(n_max + 1) for n1 in range(n, -1, -1)])


def _source_params(v: Float[Array, " 6"], offset: float) -> tuple[dict, Float[Array, ""]]:
    """Sérsic shape from unconstrained ``v`` and its log prior (weak: sizes 0.02-1.5", n 0.5-4, |e| < 0.8)."""
    log_r, n_raw, a1, a2, cx, cy = v
    e1, e2 = 0.8 * jnp.tanh(a1), 0.8 * jnp.tanh(a2)
    params = {"R_sersic": jnp.exp(log_r), "n_sersic": 0.5 + 3.5 * jax.nn.sigmoid(n_raw), "e1": e1, "e2": e2,
              "center_x": offset * cx, "center_y": offset * cy}
    log_prior = (-0.5 * ((log_r - jnp.log(0.2)) / 1.0) ** 2 - 0.5 * (a1**2 + a2**2) / 0.5**2
                 - 0.5 * (cx**2 + cy**2) - 0.5 * n_raw**2)
    return params, log_prior


class SersicImager(eqx.Module):
    """Model images of a lensed elliptical Sérsic on an observation's grid.

    The image grid, extended by the PSF half-width, is traced at ``supersampling^2`` rays per pixel
    (the layout of :class:`~blindlens.lensing_operator.LensingOperator`), the ray values are
    averaged per pixel, convolved with the PSF and cropped; masked pixels are *not* zeroed.

    Parameters
    ----------
    observation
        :class:`~blindlens.observation.Observation`.
    supersampling
        Rays per pixel per axis.
    """

    x: Array
    y: Array
    psf: object
    supersampling: int = eqx.field(static=True)
    image_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, observation, supersampling: int = 2):
        grid = observation.image_grid
        self.psf = None if observation.psf is None else observation.psf_operator()
        pad = self.psf.half_size if self.psf is not None else (0, 0)
        k = int(supersampling)
        x, y = grid.subpixel_coordinates(k, pad)  # the LensingOperator ray layout, sky frame included
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.supersampling = k
        self.image_shape = (grid.ny, grid.nx)

    def __call__(self, lens, amp, R_sersic, n_sersic, e1, e2, center_x=0.0, center_y=0.0) -> Float[Array, "ny nx"]:
        """The PSF-convolved image of the Sérsic (:func:`sersic_ellipse` parameters) seen through ``lens``."""
        bx, by = lens.ray_shoot(self.x, self.y)
        return self._image(sersic_ellipse(bx, by, amp, R_sersic, n_sersic, e1, e2, center_x, center_y))

    def shapelet_images(self, lens, n_max: int, beta, center_x=0.0, center_y=0.0) -> Float[Array, "k ny nx"]:
        """Images of the :func:`shapelets` (unit coefficients) seen through ``lens``, stacked."""
        bx, by = lens.ray_shoot(self.x, self.y)
        return jax.vmap(self._image)(shapelets(bx, by, n_max, beta, center_x, center_y))

    def _image(self, rays):
        k = self.supersampling
        pixels = rays.reshape(rays.shape[0] // k, k, rays.shape[1] // k, k).mean(axis=(1, 3))
        if self.psf is None:
            return pixels
        return self.psf.crop(self.psf.convolve_padded(pixels))


def prefit_lens_with_sersic(
    key: PRNGKeyArray,
    lens_model,
    observation,
    config: SersicPrefitConfig = SersicPrefitConfig(),
    init_lens: dict | None = None,
) -> SersicPrefitResult:
    """Multi-start fit of the lens with an elliptical Sérsic source (see the module docstring).

    Parameters
    ----------
    key
        PRNG key (starting lenses are prior draws; starting Sérsic centres are drawn too).
    lens_model
        The NumPyro lens model (a callable returning a lens Module).
    observation
        :class:`~blindlens.observation.Observation` (image, noise, PSF, mask, pixel grid).
    config
        :class:`SersicPrefitConfig`.
    init_lens
        Optional lens values (site name -> value; missing sites from the prior) that the first
        run starts from instead of a prior draw (a guess, or a previous fit).

    Returns
    -------
    SersicPrefitResult
        Runs sorted by residual chi^2, best first.
    """
    from .lens_space import LensSpace as _LensSpace
    from .numpyro_model import nuisance_site_names, without_nuisance

    nuisance = nuisance_site_names(lens_model)  # (the grid placement: fixed at 0, see below)
    space = _LensSpace(without_nuisance(lens_model))
    imager = SersicImager(observation, config.supersampling)
    search_ss = config.supersampling if config.search_supersampling is None else config.search_supersampling
    search_imager = imager if search_ss == config.supersampling else SersicImager(observation, search_ss)
    ny, nx = observation.shape
    mask = jnp.ones((ny, nx)) if observation.mask is None else jnp.asarray(observation.mask, jnp.float32)
    weight = mask / jnp.asarray(observation.noise) ** 2
    image = jnp.asarray(observation.image)
    num_lens = space.unconstrain(space.prior_draw(jr.key(0))).shape[0]
    light_index, light_images, num_light = _lens_light_parts(space, observation, config.supersampling)
    search_light_images = (light_images if search_ss == config.supersampling
                           else _lens_light_parts(space, observation, search_ss)[1])
    tie = _centre_tie(space, config.mass_light_offset)

    def fit(u, robust=False, search=True):
        lens, log_prior = space.log_prior_and_lens(u[:num_lens])
        log_prior = log_prior + tie.log_density(u[:num_lens])
        shape, log_prior_source = _source_params(u[num_lens:], config.source_offset)
        # the deflector light's and the source's amplitudes are linear: weighted least squares
        light, sersic = (search_light_images, search_imager) if search else (light_images, imager)
        design = jnp.concatenate([light(lens), sersic(lens, 1.0, **shape)[None]])
        coef, chi2 = _linear_amplitudes(design, image, weight)
        loss = chi2
        if config.robust_fraction:  # the Cauchy runs' amplitudes and loss
            coef_r, loss_r = _robust_amplitudes(design, image, weight, config.robust_scale, coef)
            coef, loss = jnp.where(robust, coef_r, coef), jnp.where(robust, loss_r, chi2)
        return log_prior + log_prior_source - 0.5 * loss, chi2, coef, shape, loss

    def light_only(a):
        """Fit the deflector light alone (no source) at the run's starting lens."""
        def objective_light(c):
            lens, log_prior = space.log_prior_and_lens(a[:num_lens].at[light_index].set(c))
            return log_prior - 0.5 * _linear_amplitudes(search_light_images(lens), image, weight)[1]

        c, _ = adam_maximise(objective_light, a[light_index], config.num_steps, config.learning_rate)
        return a.at[light_index].set(c)

    def objective(u, robust=False):
        return fit(u, robust)[0]

    # starts whose Sérsic stage holds the mass centre on the light's (the weak tie alone does not);
    # the last ones, so that run 0 (``init_lens``) keeps its own centre
    num_held = round(config.tied_fraction * config.num_starts) if tie.sd else 0
    held = jnp.arange(config.num_starts) >= config.num_starts - num_held
    robust = _spread_flags(config.num_starts, config.robust_fraction)  # the Cauchy stage's starts

    def hold(u, h):
        """``u`` with the mass centre on the light's where ``h``."""
        return u.at[:num_lens].set(jnp.where(h, tie.start(u[:num_lens]), u[:num_lens]))

    @jax.jit
    def run(keys):
        def start(kk):
            k_lens, k_src = jr.split(kk)
            u_lens = space.unconstrain(space.prior_draw(k_lens))
            v = jnp.zeros(6, u_lens.dtype).at[4:].set(jr.normal(k_src, (2,), u_lens.dtype))
            v = v.at[0].set(jnp.log(0.2))
            return jnp.concatenate([u_lens, v])

        u0 = jax.vmap(start)(keys)
        if init_lens is not None:
            u0 = u0.at[0, :num_lens].set(space.unconstrain(space.complete(init_lens)).astype(u0.dtype))
        # the source first, at each run's starting lens (a lens chasing a misplaced source drifts away),
        # then lens and source together
        def source_only(a, r):
            v, _ = adam_maximise(lambda b: objective(jnp.concatenate([a[:num_lens], b]), r), a[num_lens:],
                                 config.num_steps, config.learning_rate)
            return jnp.concatenate([a[:num_lens], v])

        if light_index.size:  # the deflector light first: it dominates the centre of the image
            u0 = jax.vmap(light_only)(u0)
            u0 = jax.vmap(lambda a: a.at[:num_lens].set(tie.start(a[:num_lens])))(u0)
        u0 = jax.vmap(source_only)(u0, robust)
        u, _ = jax.vmap(lambda a, h, r: adam_maximise(lambda b: objective(hold(b, h), r), a, config.num_steps,
                                                      config.learning_rate))(u0, held, robust)
        u = jax.vmap(hold)(u, held)
        loss = jax.vmap(fit)(u, robust)[4]  # each group's own loss, at the search's sampling
        _, chi2, coef, _, _ = jax.vmap(lambda a: fit(a, search=False))(u)  # ranked at ``supersampling``
        return u, chi2, loss, coef

    n_max = config.shapelet_order

    def fit_refined(w):
        """Sérsic + shapelets (all amplitudes linear, weighted least squares); ``w = (u, log beta)``."""
        lens, log_prior = space.log_prior_and_lens(w[:num_lens])
        log_prior = log_prior + tie.log_density(w[:num_lens])
        shape, log_prior_source = _source_params(w[num_lens:num_lens + 6], config.source_offset)
        log_beta = w[num_lens + 6]
        design = jnp.concatenate([light_images(lens), imager(lens, 1.0, **shape)[None],
                                  imager.shapelet_images(lens, n_max, jnp.exp(log_beta), shape["center_x"],
                                                         shape["center_y"])])
        coef, chi2 = _linear_amplitudes(design, image, weight, nonnegative=False)
        log_prior_beta = -0.5 * ((log_beta - jnp.log(0.15)) / 1.0) ** 2
        return log_prior + log_prior_source + log_prior_beta - 0.5 * chi2, chi2, coef

    @jax.jit
    def refine(u):
        w0 = jnp.concatenate([u, jnp.log(jnp.clip(jax.vmap(
            lambda a: _source_params(a[num_lens:], config.source_offset)[0]["R_sersic"])(u), 0.03, 1.0))[:, None]], axis=1)
        w, _ = jax.vmap(lambda a: adam_maximise(lambda b: fit_refined(b)[0], a, config.refine_steps,
                                        0.5 * config.learning_rate))(w0)
        _, chi2, coef = jax.vmap(fit_refined)(w)
        return w[:, :num_lens + 6], chi2, coef[:, :num_light]

    u, chi2, loss, coef = run(jr.split(key, config.num_starts))
    chi2 = jnp.where(jnp.isfinite(chi2), chi2, jnp.inf)
    refined = min(config.refine_runs, config.num_starts) if config.num_steps and config.refine_steps else 0
    # the runs to refine: the best of each group by its own loss, in turn; the rest by chi^2
    order = _interleaved_order(jnp.where(jnp.isfinite(loss), loss, jnp.inf), robust)
    rest = order[refined:][jnp.argsort(chi2[order[refined:]])]
    order = jnp.concatenate([order[:refined], rest])
    u, chi2, coef = u[order], chi2[order], coef[order]  # coef: [light amplitudes..., Sérsic amplitude] per run
    light_amp, amp = coef[:, :num_light], coef[:, -1]
    if refined:
        u_ref, chi2_ref, light_ref = refine(u[:refined])
        chi2_ref = jnp.where(jnp.isfinite(chi2_ref), chi2_ref, jnp.inf)
        top = jnp.argsort(chi2_ref)  # the refined runs, re-ranked, stay ahead of the unrefined ones
        u = u.at[:refined].set(u_ref[top])
        chi2 = chi2.at[:refined].set(chi2_ref[top])
        light_amp = light_amp.at[:refined].set(light_ref[top])
        amp = amp.at[:refined].set(jax.vmap(lambda a: fit(a, search=False)[2][-1])(u[:refined]))
    lens = jax.vmap(lambda a: space.constrain(a[:num_lens]))(u)
    shape = jax.vmap(lambda a: _source_params(a[num_lens:num_lens + 6], config.source_offset)[0])(u)
    if num_light:  # the runs carry the fitted light amplitudes (of the fit their chi^2 is of), inside their prior
        lens = jax.vmap(lambda a, c: _with_light_amplitudes(space, a[:num_lens], c))(u, light_amp)
    runs = {n: v for n, v in lens.items()}
    for n in nuisance:  # the placement is degenerate with the Sérsic centre: fitted without it, reported at 0
        runs[n] = jnp.zeros_like(chi2)
    source = {"amp": amp, **shape}
    return SersicPrefitResult({n: v[0] for n, v in runs.items()}, chi2, runs, source, int(jnp.sum(mask)),
                              refined)


class _CentreTie(NamedTuple):
    """The pre-fit's tie of the mass centre to the deflector light's (``sd = 0``: none)."""

    space: object
    sd: float

    def _centres(self, u_lens):
        values = self.space.constrain(u_lens)
        return values, [(values[m], values[f"lens_light_{m}"]) for m in ("center_x", "center_y")]

    def log_density(self, u_lens) -> Float[Array, ""]:
        """``-|c_mass - c_light|^2 / (2 sd^2)`` [nats]."""
        if not self.sd:
            return jnp.zeros((), u_lens.dtype)
        _, pairs = self._centres(u_lens)
        return -0.5 * sum((m - f) ** 2 for m, f in pairs) / self.sd**2

    def start(self, u_lens):
        """``u_lens`` with the mass centre moved onto the light centre."""
        if not self.sd:
            return u_lens
        values, pairs = self._centres(u_lens)
        values = {**values, "center_x": pairs[0][1], "center_y": pairs[1][1]}
        return self.space.unconstrain(values).astype(u_lens.dtype)


def _centre_tie(space, sd: float) -> _CentreTie:
    """A :class:`_CentreTie` when the model has both a mass centre and a free light centre, else none."""
    names = set(space.names)
    if not {"center_x", "center_y", "lens_light_center_x", "lens_light_center_y"} <= names:
        sd = 0.0
    return _CentreTie(space, float(sd))


def _linear_amplitudes(design, image, weight, nonnegative: bool = True):
    """Weighted least-squares amplitudes of the images ``design`` ``(k, ny, nx)`` and the residual chi^2.

    A small ridge (1e-6 of the mean diagonal) keeps the solve defined for degenerate images; with
    ``nonnegative`` negative amplitudes are set to zero (a light or source cannot be negative).
    """
    flat = design.reshape(design.shape[0], -1)
    wflat = weight.reshape(-1)
    data = image.reshape(-1)
    gram = (flat * wflat) @ flat.T
    ridge = 1e-6 * jnp.trace(gram) / gram.shape[0] + 1e-30
    coef = jnp.linalg.solve(gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype), (flat * wflat) @ data)
    if nonnegative:
        coef = jnp.maximum(coef, 0.0)
    return coef, jnp.sum(wflat * (data - coef @ flat) ** 2)


def _spread_flags(n: int, fraction: float) -> Array:
    """``n`` booleans, ``floor(fraction n)`` of them true, spread evenly, the first false unless ``fraction == 1``."""
    i = jnp.arange(n)
    return jnp.floor((i + 1) * fraction + 1e-9) > jnp.floor(i * fraction + 1e-9)


def _interleaved_order(loss, flags) -> Array:
    """Run order for the refinement: each group (``flags`` false / true) ranked by its own ``loss``,
    the groups merged by rank quantile (their losses are not comparable), the false group first on ties."""
    rank = jnp.argsort(jnp.argsort(jnp.where(flags, jnp.inf, loss)))  # within-group ranks (the other group last)
    rank_r = jnp.argsort(jnp.argsort(jnp.where(flags, loss, jnp.inf)))
    size_r = jnp.sum(flags)
    size = flags.shape[0] - size_r
    quantile = jnp.where(flags, (rank_r + 0.5) / jnp.maximum(size_r, 1), (rank + 0.5) / jnp.maximum(size, 1))
    return jnp.lexsort((flags, quantile))


def _robust_amplitudes(design, image, weight, scale: float, start=None, iterations: int = 4):
    """Amplitudes and loss of a Cauchy fit: ``sum c^2 log(1 + r^2 / c^2)`` over the whitened residuals ``r``
    (``c = scale``), the amplitudes by iteratively reweighted least squares from ``start`` (default:
    the Gaussian fit's, which the caller usually has already)."""
    wflat = weight.reshape(-1)
    flat = design.reshape(design.shape[0], -1)
    data = image.reshape(-1)
    c2 = scale**2

    def step(coef, _):
        r2 = wflat * (data - coef @ flat) ** 2
        return _linear_amplitudes(design, image, weight / (1.0 + r2.reshape(weight.shape) / c2))[0], None

    if start is None:
        start = _linear_amplitudes(design, image, weight)[0]
    coef, _ = jax.lax.scan(step, start, None, length=iterations)
    r2 = wflat * (data - coef @ flat) ** 2
    return coef, jnp.sum(c2 * jnp.log1p(r2 / c2))


def _with_light_amplitudes(space, u_lens, coef) -> dict:
    """Constrained lens values of ``u_lens`` with the ``lens_light*_amp`` sites set to ``coef`` (in
    component order) where it lies strictly inside the prior's support (a zero amplitude under a
    positive prior would start a chain at minus infinity); elsewhere the run's own value stays."""
    values = space.constrain(u_lens)
    amps = [n for n in space.names if n.startswith("lens_light") and n.endswith("_amp")]  # component order
    for n, c in zip(amps, coef, strict=True):
        support = space.transforms[n].codomain
        low, high = getattr(support, "lower_bound", -jnp.inf), getattr(support, "upper_bound", jnp.inf)
        values[n] = jnp.where((c > low) & (c < high), c, values[n]).astype(values[n].dtype)
    return values


def _lens_light_parts(space, observation, supersampling: int):
    """``(light_index, light_images, k)``: the unconstrained coordinates of the ``lens_light*`` sites,
    ``lens -> (k, ny, nx)``, the images of the ``k`` deflector-light components at unit amplitude,
    and ``k`` (0 for a mass-only lens model)."""
    import numpy as np

    from ..physics.light_profiles import LensLightImager, light_of

    probe = space.log_prior_and_lens(space.unconstrain(space.prior_draw(jr.key(0))))[0]
    ny, nx = observation.shape
    if light_of(probe) is None:
        return np.zeros(0, int), lambda lens: jnp.zeros((0, ny, nx)), 0
    psf = None if observation.psf is None else observation.psf_operator()
    light_imager = LensLightImager(observation.image_grid, psf, supersampling)
    where = space._unravel(jnp.arange(space.size, dtype=jnp.float32))
    light_index = np.sort(np.concatenate([np.atleast_1d(np.asarray(where[n])).astype(int)
                                          for n in space.names if n.startswith("lens_light")] or [np.zeros(0, int)]))

    def light_images(lens):
        return jnp.stack([light_imager(eqx.tree_at(lambda c: c.amp, comp, jnp.ones_like(comp.amp)))
                          for comp in light_of(lens).components])

    return light_index, light_images, len(light_of(probe).components)
