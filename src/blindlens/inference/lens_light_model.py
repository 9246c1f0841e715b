"""Deflector light as NumPyro sites: wrap any lens model with Sérsic lens light.

:func:`with_lens_light` turns a lens model (a NumPyro model returning a mass lens, see
:mod:`blindlens.numpyro_model`) into one that also samples elliptical Sérsic light components and
returns :class:`~blindlens.light_profiles.LensWithLight`. The sites are named
``lens_light_amp, lens_light_R_sersic, lens_light_n_sersic, lens_light_e1, lens_light_e2,
lens_light_center_x, lens_light_center_y`` (lenstronomy ``SERSIC_ELLIPSE`` parameters, prefixed;
a second component gets ``lens_light2_...``). Their default priors are :func:`lens_light_priors`.

The amplitudes are sampled like every other lens-light parameter (by the NUTS lens block of
:class:`~blindlens.gibbs_kernel.BlindLensGibbs`), not solved for: the likelihood is Gaussian in
them, NUTS's adapted metric handles that direction well, and sampling keeps the posterior exact
(profiling them out would not be).

References
----------
Birrer & Amara 2018, Phys. Dark Univ. 22, 189 (lenstronomy ``SERSIC_ELLIPSE``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpyro
import numpyro.distributions as dist

from ..physics.light_profiles import (
    SERSIC_NAMES,
    LensLight,
    LensWithLight,
    SersicEllipse,
)

__all__ = ["LENS_LIGHT_PREFIX", "amp_scale_of", "lens_light_priors", "lens_light_site_names", "with_lens_light"]

LENS_LIGHT_PREFIX = "lens_light"
"""Site-name prefix of the deflector light (component ``i >= 2`` is ``lens_light{i}_``)."""


def _prefix(component: int) -> str:
    return f"{LENS_LIGHT_PREFIX}_" if component == 0 else f"{LENS_LIGHT_PREFIX}{component + 1}_"


def lens_light_site_names(num_components: int = 1, *, tie_center: bool = False) -> tuple[str, ...]:
    """The site names :func:`with_lens_light` adds, in order."""
    names = [n for n in SERSIC_NAMES if not (tie_center and n.startswith("center"))]
    return tuple(_prefix(i) + n for i in range(num_components) for n in names)


def lens_light_priors(amp_scale: float) -> dict[str, dist.Distribution]:
    """Default priors of one Sérsic lens-light component.

    Parameters
    ----------
    amp_scale
        A typical surface brightness of the image [image units / arcsec^2], e.g. the brightest
        pixel divided by the pixel area (:func:`amp_scale_of`).

    Returns
    -------
    ``amp ~ LogUniform(1e-5, 10) amp_scale`` (the amplitude is the brightness at ``R_sersic``,
    ~1e-3 of the central value for ``n = 4``); ``R_sersic ~ LogUniform(0.05, 5)`` arcsec;
    ``n_sersic ~ U(0.5, 8)``; ``e1, e2 ~ N(0, 0.2)`` truncated to ``(-0.6, 0.6)``;
    ``center_x, center_y ~ N(0, 0.2)`` arcsec (the light is near the image centre, like the mass).
    """
    if not np.isfinite(amp_scale) or amp_scale <= 0:
        raise ValueError(f"lens_light_priors needs a positive amp_scale (image units / arcsec^2), got {amp_scale}.")
    return {
        "amp": dist.LogUniform(1e-5 * amp_scale, 10.0 * amp_scale),
        "R_sersic": dist.LogUniform(0.05, 5.0),
        "n_sersic": dist.Uniform(0.5, 8.0),
        "e1": dist.TruncatedNormal(0.0, 0.2, low=-0.6, high=0.6),
        "e2": dist.TruncatedNormal(0.0, 0.2, low=-0.6, high=0.6),
        "center_x": dist.Normal(0.0, 0.2),
        "center_y": dist.Normal(0.0, 0.2),
    }


def amp_scale_of(observation) -> float:
    """The brightest unmasked pixel per arcsec^2 of ``observation``: the scale of :func:`lens_light_priors`."""
    image = np.asarray(observation.image, float)
    mask = getattr(observation, "mask", None)
    if mask is not None:
        image = np.where(np.asarray(mask, bool), image, -np.inf)
    peak = float(np.max(image))
    if not np.isfinite(peak) or peak <= 0:
        raise ValueError("the image has no positive unmasked pixel; lens light needs a positive image.")
    return peak / float(observation.pixel_scale) ** 2


def _mass_center(mass):
    for comp in getattr(mass, "components", (mass,)):
        if hasattr(comp, "center_x") and hasattr(comp, "center_y"):
            return comp.center_x, comp.center_y
    raise ValueError("tie_center=True needs a mass profile with center_x, center_y.")


class _WithLensLight:
    """The model :func:`with_lens_light` returns (a class, so that kernels holding it pickle)."""

    def __init__(self, lens_model, priors, num_components, tie_center):
        self.lens_model = lens_model
        self.priors = priors
        self.num_components = num_components
        self.tie_center = tie_center

    def __call__(self):
        mass = self.lens_model()
        components = []
        for i in range(self.num_components):
            values = {n: numpyro.sample(_prefix(i) + n, self.priors[i][n]) for n in SERSIC_NAMES
                      if not (self.tie_center and n.startswith("center"))}
            if self.tie_center:
                values["center_x"], values["center_y"] = _mass_center(mass)
            components.append(SersicEllipse(**values))
        return LensWithLight(mass, LensLight(components))

    def __repr__(self):
        return f"with_lens_light({self.lens_model!r}, num_components={self.num_components}, tie_center={self.tie_center})"


def with_lens_light(
    lens_model: Callable,
    *,
    amp_scale: float | None = None,
    priors: Mapping[str, dist.Distribution] | list | None = None,
    num_components: int = 1,
    tie_center: bool = False,
) -> Callable:
    """A lens model that also samples Sérsic deflector light (see the module docs).

    Parameters
    ----------
    lens_model
        A NumPyro lens model returning a mass lens.
    amp_scale
        Scale of the default amplitude prior [image units / arcsec^2] (:func:`amp_scale_of`);
        required unless ``priors`` gives every component's ``amp``.
    priors
        Replacements for some default priors, by lenstronomy name (``{"n_sersic": dist.Uniform(1, 6)}``),
        one mapping for all components or a list with one per component.
    num_components
        Number of Sérsic components (e.g. 2 for a bulge and a disc).
    tie_center
        Fix the light centre to the mass centre (no light-centre sites).

    Returns
    -------
    A NumPyro model returning :class:`~blindlens.light_profiles.LensWithLight`.
    """
    if num_components < 1:
        raise ValueError(f"num_components must be >= 1, got {num_components}.")
    per_component = list(priors) if isinstance(priors, (list, tuple)) else [priors or {}] * num_components
    if len(per_component) != num_components:
        raise ValueError(f"priors has {len(per_component)} entries for {num_components} components; give one per component.")
    merged = []
    for given in per_component:
        given = dict(given or {})
        unknown = sorted(set(given) - set(SERSIC_NAMES))
        if unknown:
            raise ValueError(f"unknown lens-light parameter(s) {unknown}; the Sérsic parameters are {list(SERSIC_NAMES)}.")
        if amp_scale is None and "amp" not in given:
            raise ValueError("with_lens_light needs amp_scale (e.g. amp_scale_of(observation)) or a prior for 'amp'.")
        defaults = lens_light_priors(amp_scale if amp_scale is not None else 1.0)
        merged.append({**defaults, **given})
    return _WithLensLight(lens_model, merged, int(num_components), bool(tie_center))
