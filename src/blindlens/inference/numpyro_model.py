"""Lens priors as plain NumPyro models, and the joint lens + source model.

A *lens model* in blindlens is an ordinary NumPyro model function without arguments that
samples the lens parameters from their priors and **returns a lens** (a mass-profile
Module from :mod:`blindlens.lens_models`)::

    import numpyro, numpyro.distributions as dist
    from blindlens.lens_models import SIE, ExternalShear

    def my_lens():
        theta_E = numpyro.sample("theta_E", dist.Uniform(0.5, 2.5))
        e1 = numpyro.sample("e1", dist.Normal(0.0, 0.15))
        ...
        return SIE(theta_E=theta_E, e1=e1, e2=e2, center_x=cx, center_y=cy) + ExternalShear(
            gamma1=g1, gamma2=g2)

Any NumPyro distribution is allowed; constrained supports (``Uniform``, ``TruncatedNormal``,
``LogNormal``...) are handled by NumPyro's bijections to unconstrained space, which is where
the samplers of :mod:`blindlens.gibbs_kernel` move.

:func:`joint_model` turns a lens model, an observation and a source prior into the joint
NumPyro model

    theta ~ p(theta)                       (the user's lens model)
    s ~ flat on R^(sy x sx)               ("source": its prior is the diffusion prior, which has
                                           no tractable density; only the Gibbs source block,
                                           which knows the score, ever moves it)
    y ~ N(A_theta s, diag(sigma^2))       ("image", masked pixels excluded)

This module and :mod:`blindlens.gibbs_kernel` are the only places that import NumPyro.

References
----------
Phan, Pradhan & Jankowiak 2019, "Composable Effects for Flexible and Accelerated Probabilistic
Programming in NumPyro", arXiv:1912.11554 (effect handlers, unconstrained-space potentials).
"""

from __future__ import annotations

import copy

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer.util import log_density

from .._types import Array, Float
from ..physics.grid import PixelGrid
from ..physics.linear_operator import AbstractLinearOperator
from .mixing_diagnostics import split_rhat_and_ess  # re-exported (its home before 2026-12-05)

__all__ = [
    "SOURCE_SITE",
    "IMAGE_SITE",
    "SIE_SHEAR_SITES",
    "EPL_SHEAR_SITES",
    "SIE_SHEAR_PRIORS",
    "EPL_SHEAR_PRIORS",
    "MULTIPOLE_PRIORS",
    "sie_shear",
    "epl_shear",
    "epl_shear_multipole",
    "lens_site_names",
    "nuisance_site_names",
    "without_nuisance",
    "wrapper_chain",
    "lens_from_values",
    "lens_log_prior",
    "lens_init_values",
    "split_rhat_and_ess",
    "JointModel",
    "joint_model",
]

SOURCE_SITE = "source"
"""Name of the source-image sample site of the joint model."""

IMAGE_SITE = "image"
"""Name of the observed-image site of the joint model."""

SIE_SHEAR_SITES = ("theta_E", "e1", "e2", "center_x", "center_y", "gamma1", "gamma2")
"""Site names of :func:`sie_shear`, in the order the lens parameters are reported."""

EPL_SHEAR_SITES = ("theta_E", "gamma", "e1", "e2", "center_x", "center_y", "gamma1", "gamma2")
"""Site names of :func:`epl_shear`."""


def _sie_shear_priors() -> dict[str, dist.Distribution]:
    return {
        # Einstein radius, arcsec: galaxy-scale lenses observed at 0.03-0.1"/pixel
        "theta_E": dist.Uniform(0.3, 3.0),
        # ellipticity components; |e| = 0.3 is an axis ratio q = 0.54
        "e1": dist.TruncatedNormal(0.0, 0.2, low=-0.6, high=0.6),
        "e2": dist.TruncatedNormal(0.0, 0.2, low=-0.6, high=0.6),
        # lens centre, arcsec, relative to the image centre (the light centroid is usually
        # known to ~0.1 arcsec)
        "center_x": dist.Normal(0.0, 0.2),
        "center_y": dist.Normal(0.0, 0.2),
        # external shear: typical |gamma_ext| ~ 0.05 (e.g. Keeton, Kochanek & Seljak 1997)
        "gamma1": dist.Normal(0.0, 0.05),
        "gamma2": dist.Normal(0.0, 0.05),
    }


SIE_SHEAR_PRIORS = _sie_shear_priors()
"""Default priors of :func:`sie_shear` (site name -> NumPyro distribution).

``theta_E ~ U(0.3, 3)`` arcsec; ``e1, e2 ~ N(0, 0.2)`` truncated to ``(-0.6, 0.6)``;
``center_x, center_y ~ N(0, 0.2)`` arcsec; ``gamma1, gamma2 ~ N(0, 0.05)``.
"""

EPL_SHEAR_PRIORS = {
    **_sie_shear_priors(),
    # logarithmic slope of the 3-D density, 2 = isothermal; SLACS: 2.08 +- 0.16
    # (Koopmans et al. 2009, ApJ 703, L51)
    "gamma": dist.TruncatedNormal(2.0, 0.2, low=1.5, high=2.5),
}
"""Default priors of :func:`epl_shear`: those of :func:`sie_shear` plus
``gamma ~ N(2, 0.2)`` truncated to ``(1.5, 2.5)``."""

MULTIPOLE_PRIORS = {
    # multipole amplitudes relative to theta_E; observed |a_m| <~ 0.01-0.02 for m = 3, 4
    # (e.g. Van de Vyvere et al. 2022, A&A 659, A127)
    "a3_1": dist.Normal(0.0, 0.01),
    "a3_2": dist.Normal(0.0, 0.01),
    "a4_1": dist.Normal(0.0, 0.01),
    "a4_2": dist.Normal(0.0, 0.01),
}
"""Default priors of the multipole components of :func:`epl_shear_multipole` (Cartesian
components ``a_m cos(m phi_m), a_m sin(m phi_m)`` for ``m = 3, 4``)."""


def _sample_all(
    defaults: Mapping[str, dist.Distribution],
    priors: Mapping[str, dist.Distribution] | None,
    order: tuple[str, ...],
) -> dict[str, Array]:
    priors = dict(priors or {})
    unknown = sorted(set(priors) - set(defaults))
    if unknown:
        raise ValueError(
            f"Unknown lens parameter(s) {unknown} in `priors`; this model's parameters are "
            f"{list(order)}."
        )
    merged = {**defaults, **priors}
    return {name: numpyro.sample(name, merged[name]) for name in order}


def sie_shear(priors: Mapping[str, dist.Distribution] | None = None):
    """Singular isothermal ellipsoid plus external shear, with default priors.

    Sites: ``theta_E, e1, e2, center_x, center_y, gamma1, gamma2`` (see
    :data:`SIE_SHEAR_PRIORS` for the priors and their justification).

    Parameters
    ----------
    priors
        Optional replacements for some of the default priors, e.g.
        ``functools.partial(sie_shear, priors={"theta_E": dist.Uniform(0.8, 1.6)})``.

    Returns
    -------
    ``SIE(...) + ExternalShear(...)``.
    """
    from ..physics.lens_models import SIE, ExternalShear

    p = _sample_all(SIE_SHEAR_PRIORS, priors, SIE_SHEAR_SITES)
    return SIE(
        theta_E=p["theta_E"], e1=p["e1"], e2=p["e2"], center_x=p["center_x"], center_y=p["center_y"]
    ) + ExternalShear(gamma1=p["gamma1"], gamma2=p["gamma2"])


def epl_shear(priors: Mapping[str, dist.Distribution] | None = None):
    """Elliptical power law (Tessore & Metcalf 2015) plus external shear, with default priors.

    Sites: ``theta_E, gamma, e1, e2, center_x, center_y, gamma1, gamma2`` (see
    :data:`EPL_SHEAR_PRIORS`).
    """
    from ..physics.lens_models import EPL, ExternalShear

    p = _sample_all(EPL_SHEAR_PRIORS, priors, EPL_SHEAR_SITES)
    return EPL(
        theta_E=p["theta_E"],
        gamma=p["gamma"],
        e1=p["e1"],
        e2=p["e2"],
        center_x=p["center_x"],
        center_y=p["center_y"],
    ) + ExternalShear(gamma1=p["gamma1"], gamma2=p["gamma2"])


def epl_shear_multipole(priors: Mapping[str, dist.Distribution] | None = None):
    """EPL + external shear + m = 3 and m = 4 multipoles centred on the lens.

    Sites: those of :func:`epl_shear` plus ``a3_1, a3_2, a4_1, a4_2`` (see
    :data:`MULTIPOLE_PRIORS`), the Cartesian multipole components in units of ``theta_E``.
    """
    from ..physics.lens_models import EPL, ExternalShear, Multipole

    defaults = {**EPL_SHEAR_PRIORS, **MULTIPOLE_PRIORS}
    order = EPL_SHEAR_SITES + tuple(MULTIPOLE_PRIORS)
    p = _sample_all(defaults, priors, order)
    lens = EPL(
        theta_E=p["theta_E"],
        gamma=p["gamma"],
        e1=p["e1"],
        e2=p["e2"],
        center_x=p["center_x"],
        center_y=p["center_y"],
    ) + ExternalShear(gamma1=p["gamma1"], gamma2=p["gamma2"])
    for m in (3, 4):
        c1, c2 = p[f"a{m}_1"], p[f"a{m}_2"]
        a_m = jnp.sqrt(c1**2 + c2**2 + 1e-30) * p["theta_E"]
        phi_m = jnp.arctan2(c2, c1) / m
        lens = lens + Multipole(
            m=m, a_m=a_m, phi_m=phi_m, center_x=p["center_x"], center_y=p["center_y"]
        )
    return lens


# --- helpers on lens models ---------------------------------------------------------------


def _trace_lens_model(lens_model: Callable, key=None):
    key = jax.random.key(0) if key is None else key
    box = {}

    def wrapped():
        box["lens"] = lens_model()

    tr = numpyro.handlers.trace(numpyro.handlers.seed(wrapped, key)).get_trace()
    return tr, box["lens"]


def lens_site_names(lens_model: Callable) -> tuple[str, ...]:
    """The latent sample sites of a lens model, in the order the model samples them.

    Raises
    ------
    ValueError
        If the model has observed sites, discrete latent sites, or does not return a lens.
    """
    tr, lens = _trace_lens_model(lens_model)
    if lens is None:
        raise ValueError(
            "The lens model returned None; a blindlens lens model must `return` the lens "
            "(e.g. `return SIE(...) + ExternalShear(...)`)."
        )
    names = []
    for name, site in tr.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            raise ValueError(
                f"The lens model has an observed site {name!r}; lens models must only sample "
                "lens parameters from their priors (the image likelihood is added by "
                "blindlens)."
            )
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"Lens parameter {name!r} has a discrete prior; NUTS needs continuous "
                "parameters."
            )
        if name in (SOURCE_SITE, IMAGE_SITE):
            raise ValueError(f"Site name {name!r} is reserved by blindlens; rename the parameter.")
        names.append(name)
    if not names:
        raise ValueError("The lens model samples no parameters; nothing to infer.")
    return tuple(names)


def nuisance_site_names(lens_model: Callable) -> tuple[str, ...]:
    """The sites of a lens model that are nuisance parameters, not lens parameters to report.

    A wrapper declares them in a ``nuisance_sites`` attribute and holds the model it wraps as
    ``lens_model`` (:func:`~blindlens.inference.source_shift_model.with_source_shift`: the source grid's
    placement ``alpha_x, alpha_y``); the declarations of every wrapper in the chain are collected.
    Nuisance sites are sampled and stored like the others, but neither the stopping rule
    (:func:`~blindlens.chain_runner.run_chains`) nor :func:`~blindlens.run_diagnostics.check_run`
    judges convergence by them: the chains may sit at different placements as long as the lens
    parameters agree.

    Returns
    -------
    The nuisance site names in wrapping order (outermost first); ``()`` for a plain model.
    """
    names = [name for model in wrapper_chain(lens_model) for name in getattr(model, "nuisance_sites", ())]
    return tuple(dict.fromkeys(names))


def wrapper_chain(lens_model: Callable):
    """``lens_model``, the model it wraps (its ``lens_model`` attribute), and so on inwards.

    Bounded at 64 levels, so that a wrapper that holds itself cannot hang a caller.
    """
    model, depth = lens_model, 0
    while model is not None and depth < 64:
        yield model
        model, depth = getattr(model, "lens_model", None), depth + 1


def without_nuisance(lens_model: Callable) -> Callable:
    """The lens model with its nuisance-only wrappers taken out (the others kept, in order).

    A wrapper that adds nothing but nuisance sites says so with ``nuisance_only = True``
    (:func:`~blindlens.inference.source_shift_model.with_source_shift`); a wrapper above it is
    copied with its ``lens_model`` replaced. The lens pre-fit fits this model: the grid placement
    is degenerate with its parametric source's centre, so fitting it only adds a flat direction.
    """
    if getattr(lens_model, "nuisance_only", False):
        return without_nuisance(lens_model.lens_model)
    inner = getattr(lens_model, "lens_model", None)
    if inner is None:
        return lens_model
    stripped = without_nuisance(inner)
    if stripped is inner:
        return lens_model
    clone = copy.copy(lens_model)
    clone.lens_model = stripped
    return clone


def lens_from_values(lens_model: Callable, values: Mapping[str, Array]):
    """Run the lens model with its sites fixed to ``values`` (constrained) and return the lens."""
    box = {}

    def wrapped():
        box["lens"] = lens_model()

    numpyro.handlers.substitute(numpyro.handlers.seed(wrapped, jax.random.key(0)), data=values)()
    return box["lens"]


def lens_log_prior(lens_model: Callable, values: Mapping[str, Array]) -> tuple[object, Float[Array, ""]]:
    """``(lens, log p(values))`` for constrained ``values`` of every lens site."""
    box = {}

    def wrapped():
        box["lens"] = lens_model()

    logp, _ = log_density(wrapped, (), {}, dict(values))
    return box["lens"], logp


def lens_init_values(lens_model: Callable, init_strategy: Callable, key=None) -> dict[str, Array]:
    """Constrained starting values of the lens sites from a NumPyro init strategy.

    ``init_strategy`` is any of ``numpyro.infer.init_to_value(values=...)``, ``init_to_median``,
    ``init_to_uniform``, ... ; it is applied to the lens model exactly as NumPyro applies it to a
    model (``substitute(seed(model, key), substitute_fn=init_strategy)``), so sites that
    ``init_to_value`` does not name fall back to ``init_to_uniform``.
    """
    key = jax.random.key(0) if key is None else key
    names = lens_site_names(lens_model)
    seeded = numpyro.handlers.substitute(numpyro.handlers.seed(lens_model, key), substitute_fn=init_strategy)
    tr = numpyro.handlers.trace(seeded).get_trace()
    return {n: jnp.asarray(tr[n]["value"]) for n in names}


def is_default_init_strategy(init_strategy) -> bool:
    """Whether ``init_strategy`` is NumPyro's default for HMC/NUTS (``init_to_uniform``, radius 2)."""
    from numpyro.infer.initialization import init_to_uniform

    if init_strategy is init_to_uniform:
        return True
    func = getattr(init_strategy, "func", None)  # functools.partial(init_to_uniform, radius=2)
    return func is init_to_uniform and dict(getattr(init_strategy, "keywords", {}) or {}) in ({}, {"radius": 2})


# --- the joint model ------------------------------------------------------------------------


class _DefaultOperatorFactory(eqx.Module):
    """The default ``factory(lens, masked=True)`` of :func:`joint_model`: a
    :class:`~blindlens.lensing_operator.LensingOperator` on the observation's grids and PSF.

    An Equinox Module whose PSF (kernel and its FFT) and mask are array leaves: the observation is
    *data* of the joint model, not a constant captured at trace time, so one compiled function
    taking a :class:`JointModel` as an argument (``eqx.filter_jit``, ``jax.vmap``) serves every
    observation with the same image shape, grids and PSF size (:mod:`blindlens.gibbs_core`). The
    grids are static (their shape and geometry select the compiled program). It pickles.
    """

    image_grid: PixelGrid
    source_grid: PixelGrid
    psf: object  # blindlens.psf.PSF or None
    mask: Array | None
    supersampling: int = eqx.field(static=True)

    def __call__(self, lens, *, masked: bool = True) -> AbstractLinearOperator:
        from ..physics.lensing_operator import LensingOperator

        return LensingOperator(
            lens,
            self.image_grid,
            self.source_grid,
            psf=self.psf,
            supersampling=self.supersampling,
            mask=self.mask if masked else None,
        )


def _default_operator_factory(observation, source_grid: PixelGrid, supersampling: int):
    psf = observation.psf_operator() if getattr(observation, "psf", None) is not None else None
    mask = getattr(observation, "mask", None)
    return _DefaultOperatorFactory(
        observation.image_grid, source_grid, psf, None if mask is None else jnp.asarray(mask), int(supersampling)
    )


class JointModel(eqx.Module):
    """The joint NumPyro model ``p(theta) p(s) N(y; A_theta s, sigma^2)`` (see module docs).

    Call it like any NumPyro model (it takes no arguments). Build it with :func:`joint_model`.

    Attributes
    ----------
    lens_model
        The user's lens model (returns a lens).
    image, noise
        Observed image and per-pixel noise standard deviation (image units), ``(ny, nx)``.
    mask
        Boolean ``(ny, nx)``, ``True`` where a pixel enters the likelihood.
    source_shape
        ``(sy, sx)`` of the source site.
    operator_factory
        ``factory(lens, masked=True) -> AbstractLinearOperator``; ``masked=True`` zeroes the
        rows of masked pixels (used by the source step), ``masked=False`` gives full model
        images (used for predictions). The default is an Equinox Module holding the
        observation's PSF and mask as arrays, so the whole model (image, noise, mask, PSF) is a
        pytree of data: pass it as an argument of a compiled function and one compilation
        serves every observation of the same shape (:mod:`blindlens.gibbs_core`). A custom
        factory that is a plain function is a non-array leaf (use ``eqx.filter_jit``).
    """

    lens_model: Callable = eqx.field(static=True)
    image: Float[Array, "ny nx"]
    noise: Float[Array, "ny nx"]
    mask: Array
    source_shape: tuple[int, int] = eqx.field(static=True)
    operator_factory: Callable
    light_imager: object = None

    def operator(self, lens, *, masked: bool = True) -> AbstractLinearOperator:
        """The linear source -> image operator of ``lens``."""
        return self.operator_factory(lens, masked=masked)

    @property
    def masked_image(self) -> Float[Array, "ny nx"]:
        """The observed image with masked pixels set to zero (what the source step fits without lens light)."""
        return jnp.where(self.mask, self.image, 0.0)

    def lens_light_image(self, lens) -> Float[Array, "ny nx"] | None:
        """The PSF-convolved deflector light of ``lens`` (``None`` when the lens carries no light)."""
        from ..physics.light_profiles import light_of

        light = light_of(lens)
        if light is None:
            return None
        if self.light_imager is None:
            raise ValueError(
                "this joint model has no lens-light imager (a custom operator_factory); pass "
                "light_imager=LensLightImager(grid, psf, supersampling) to joint_model."
            )
        return self.light_imager(light)

    def predict(self, lens, source, *, masked: bool = False) -> Float[Array, "ny nx"]:
        """The model image ``A_theta s`` plus the deflector light of ``lens``, if any."""
        image = self.operator(lens, masked=masked)(source)
        light = self.lens_light_image(lens)
        if light is None:
            return image
        return image + (jnp.where(self.mask, light, 0.0) if masked else light)

    def source_data(self, lens) -> Float[Array, "ny nx"]:
        """What the source step fits given ``lens``: the masked image minus the deflector light."""
        light = self.lens_light_image(lens)
        if light is None:
            return self.masked_image
        return jnp.where(self.mask, self.image - light, 0.0)

    def pixel_log_likelihood(self, model_image: Float[Array, "ny nx"]) -> Float[Array, "ny nx"]:
        """Pointwise ``log N(y_i; m_i, sigma_i^2)`` of each pixel given a model image (0 on masked pixels)."""
        r = (self.image - model_image) / self.noise
        ll = -0.5 * r**2 - jnp.log(self.noise) - 0.5 * jnp.log(2 * jnp.pi)
        return jnp.where(self.mask, ll, 0.0)

    def residual_chi2(self, lens, source) -> Float[Array, ""]:
        """``sum_unmasked ((y - A_theta s - light) / sigma)^2`` of one ``(lens, source)`` (dimensionless).

        The one residual chi^2 of a joint model: chain starts, the lens search and the pure core
        rank and report fits by it (``-2 log_likelihood`` up to a lens-free constant).
        """
        resid = (self.image - self.predict(lens, source)) / self.noise
        return jnp.sum(jnp.where(self.mask, resid**2, 0.0))

    def log_likelihood(self, lens, source) -> Float[Array, ""]:
        """``log N(y; A s, sigma^2)`` over unmasked pixels (Gaussian, independent pixels)."""
        return jnp.sum(self.pixel_log_likelihood(self.predict(lens, source)))

    def __call__(self):
        lens = self.lens_model()
        source = numpyro.sample(
            SOURCE_SITE,
            dist.ImproperUniform(constraints.real, (), event_shape=self.source_shape),
            infer={"event_dims": ["source_y", "source_x"]},
        )
        model_image = self.predict(lens, source)
        numpyro.sample(
            IMAGE_SITE,
            dist.Normal(model_image, self.noise).mask(self.mask).to_event(2),
            obs=self.image,
            infer={"event_dims": ["image_y", "image_x"]},
        )
        return lens


def joint_model(
    lens_model: Callable,
    observation,
    source_grid: PixelGrid,
    *,
    supersampling: int = 1,
    operator_factory: Callable | None = None,
    light_imager=None,
) -> JointModel:
    """Build the joint lens + source NumPyro model for one observation.

    Parameters
    ----------
    lens_model
        A NumPyro model without arguments that returns a lens (see module docs).
    observation
        A :class:`blindlens.observation.Observation` (``image``, ``noise``, ``psf``, ``mask``,
        ``image_grid``); ``noise`` is the per-pixel standard deviation, scalar or ``(ny, nx)``.
    source_grid
        The source-plane pixel grid (its shape must match the source prior's).
    supersampling
        Ray-tracing supersampling factor of the default lensing operator.
    operator_factory
        Optional ``factory(lens, masked=True) -> AbstractLinearOperator`` replacing the
        default :class:`blindlens.lensing_operator.LensingOperator` (tests, custom optics).
    light_imager
        Optional :class:`blindlens.light_profiles.LensLightImager` for lens models that return a
        :class:`~blindlens.light_profiles.LensWithLight`; default: one on the observation's grid
        and PSF at ``supersampling``.

    Returns
    -------
    The :class:`JointModel`.
    """
    lens_site_names(lens_model)  # validates the lens model early, with clear errors
    image = jnp.asarray(observation.image)
    noise = jnp.broadcast_to(jnp.asarray(observation.noise, image.dtype), image.shape)
    mask = getattr(observation, "mask", None)
    mask = jnp.ones(image.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the image shape {image.shape}.")
    if not bool(jnp.all(jnp.where(mask, noise > 0, True))):
        raise ValueError(
            "The noise map must be positive on every unmasked pixel; mask out pixels with no "
            "noise estimate."
        )
    if not bool(jnp.all(jnp.isfinite(jnp.where(mask, image, 0.0)))):
        raise ValueError("The image has non-finite values on unmasked pixels; mask them out.")
    noise = jnp.where(mask, noise, 1.0)
    if light_imager is None and hasattr(observation, "image_grid"):
        from ..physics.light_profiles import LensLightImager

        psf = observation.psf_operator() if getattr(observation, "psf", None) is not None else None
        light_imager = LensLightImager(observation.image_grid, psf, supersampling)
    if operator_factory is None:
        operator_factory = _default_operator_factory(observation, source_grid, supersampling)
    return JointModel(
        lens_model=lens_model,
        image=jnp.where(mask, image, 0.0),
        noise=noise,
        mask=mask,
        source_shape=tuple(source_grid.shape),
        operator_factory=operator_factory,
        light_imager=light_imager,
    )
