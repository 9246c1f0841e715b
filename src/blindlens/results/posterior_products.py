"""The posterior's summary maps: model, lens light, lensed source, residuals and the source's mean and sd.

These are what an astronomer looks at (and what :func:`blindlens.survey_fits.write_fits_products`
writes as FITS with world coordinates):

* ``model``: the posterior mean of the noise-free model image (lensed source + deflector light);
* ``lens_light``: the posterior mean of the PSF-convolved deflector light (absent for mass-only models);
* ``lensed_source``: ``model - lens_light``;
* ``normalized_residual``: ``(y - model) / sigma`` on unmasked pixels, NaN on masked ones;
* ``source_mean``, ``source_sd``: pixelwise posterior mean and sd of the source [image units per pixel],
  in the source plane's frame (draws of a sampled grid placement moved back by it:
  :mod:`blindlens.results.source_frame`).

Image units throughout; arrays ``[row=y, col=x]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Array, Float
from ..inference.numpyro_model import SOURCE_SITE, lens_from_values, lens_site_names
from ..physics.light_profiles import light_of
from .posterior_figures import source_draws

__all__ = ["posterior_products"]


def posterior_products(idata, joint_model, *, max_draws: int = 200) -> dict[str, Float[Array, "..."]]:
    """Summary maps of a blind-lensing posterior (see the module docs).

    Parameters
    ----------
    idata
        The run's InferenceData (:func:`blindlens.to_inference_data`, with its ``posterior_predictive``
        group when present; otherwise the model images are recomputed).
    joint_model
        The run's :class:`~blindlens.numpyro_model.JointModel` (``BlindLensGibbs.joint_model``).
    max_draws
        The lens-light and model means use at most this many draws, evenly thinned.

    Returns
    -------
    dict
        ``model``, ``lensed_source``, ``normalized_residual``, ``source_mean``, ``source_sd`` and, for
        a lens model with light, ``lens_light``; numpy float32 arrays.
    """
    post = idata.posterior
    names = lens_site_names(joint_model.lens_model)
    missing = [n for n in (*names, SOURCE_SITE) if n not in post]
    if missing:
        raise ValueError(f"the posterior has no {missing}: it is not a run of this lens model.")
    n_total = post.sizes["chain"] * post.sizes["draw"]
    take = np.unique(np.linspace(0, n_total - 1, min(max_draws, n_total)).round().astype(int))
    values = {n: jnp.asarray(np.asarray(post[n].values).reshape(n_total)[take]) for n in names}
    sources = np.asarray(post[SOURCE_SITE].values).reshape(n_total, *post[SOURCE_SITE].shape[2:])

    @jax.jit
    def one(v, s):
        lens = lens_from_values(joint_model.lens_model, v)
        image = joint_model.predict(lens, s)
        light = joint_model.lens_light_image(lens) if light_of(lens) is not None else jnp.zeros_like(image)
        return image, light

    images, lights = jax.lax.map(lambda a: one(*a), (values, jnp.asarray(sources[take])))
    registered = source_draws(idata)
    model = np.asarray(images.mean(axis=0), np.float32)
    y = np.asarray(joint_model.image, np.float32)
    noise = np.asarray(joint_model.noise, np.float32)
    mask = np.asarray(joint_model.mask, bool)
    out = {
        "model": model,
        "normalized_residual": np.where(mask, (y - model) / noise, np.nan).astype(np.float32),
        "source_mean": registered.mean(axis=0).astype(np.float32),
        "source_sd": registered.std(axis=0).astype(np.float32),
    }
    light = np.asarray(lights.mean(axis=0), np.float32)
    if light_of(lens_from_values(joint_model.lens_model, {n: v[0] for n, v in values.items()})) is not None:
        out["lens_light"] = light
        out["lensed_source"] = model - light
    else:
        out["lensed_source"] = model
    return out
