"""The source grid's sub-pixel placement as a nuisance: wrap any lens model with a constant deflection.

A pixelated source on a grid of pitch ``p`` cannot draw a galaxy that lies between its pixels:
with the true lens, the best source on a grid shifted by a quarter pixel from the one a galaxy
was drawn on still misses the noiseless image by chi^2 = 11-174 on 0.05" data
(``docs/calibration/source_representation.md``), and the lens absorbs that misfit by moving
several posterior sd, in a direction set by where the grid happens to lie (the same lenstronomy
system, five grid placements: ``e2`` 2.4, 1.5, 2.4, -0.2 and 2.1 sd from the truth,
``docs/joint_inference.md``). Tagore & Keeton (2014, MNRAS 445, 694, arXiv:1408.6297) measured
the same "discreteness noise" of gridded sources: the scatter of lens parameters between telescope
pointings can exceed the quoted uncertainties.

:func:`with_source_shift` makes the placement a parameter: a constant deflection
(:class:`~blindlens.lens_models.Shift`, lenstronomy ``SHIFT``) with sites ``alpha_x, alpha_y``,
each uniform over two pixels, ``U(-p, p)`` arcsec. A constant deflection moves the whole source
plane, which the source's own position absorbs, so it changes nothing physical: it only slides the
grid under the source, and the posterior of the lens parameters becomes the average over
placements, weighted by how well each placement fits. One pixel is the period of the grid (a
whole-pixel shift is the same grid, up to a column at the field's edge), so a uniform prior over
whole periods weights every placement equally; two periods rather than one put every placement
inside the range, away from its ends (measured: with ``U(-p/2, p/2)`` the chains of a lenstronomy
system pressed against ``alpha_x = -p/2``).

The sampler moves ``alpha`` like any lens parameter. Given the source it is as well measured as the
lens centre, so it wanders slowly within a chain (measured: about 0.01" per 150 sweeps; one chain of
1500 draws spanned 0.7 pixel), and chains started from different lenses (pre-fit lenses or prior
draws) stay at different placements for hundreds of sweeps: the chains' spread is the
discretisation's uncertainty, R-hat sees it (1.6-3.0 on ``alpha`` in the runs of
``docs/joint_inference.md``), and the pooled chains weight their placements equally. ``alpha`` is
therefore declared a nuisance (:func:`~blindlens.numpyro_model.nuisance_site_names`): it is stored
in the posterior, its R-hat is printed, but convergence is judged by the lens parameters alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpyro
import numpyro.distributions as dist

from ..physics.lens_models import AbstractLens, Shift

__all__ = ["SOURCE_SHIFT_SITES", "with_source_shift"]

SOURCE_SHIFT_SITES = ("alpha_x", "alpha_y")
"""The site names :func:`with_source_shift` adds (lenstronomy ``SHIFT``'s parameters), in order."""


class _WithSourceShift:
    """The model :func:`with_source_shift` returns (a class, so that kernels holding it pickle)."""

    nuisance_sites = SOURCE_SHIFT_SITES
    """Sites that are not lens parameters (:func:`~blindlens.numpyro_model.nuisance_site_names`)."""
    nuisance_only = True
    """It adds nothing else (:func:`~blindlens.numpyro_model.without_nuisance` takes it out)."""

    def __init__(self, lens_model: Callable, pixel_scale: float):
        self.lens_model = lens_model
        self.pixel_scale = pixel_scale

    def __call__(self):
        lens = self.lens_model()
        if not isinstance(lens, AbstractLens):
            raise ValueError(
                f"with_source_shift wraps a lens model returning a mass lens, got {type(lens).__name__}; "
                "add the deflector light after the shift (with_lens_light(with_source_shift(model, p)))."
            )
        p = self.pixel_scale
        shift = {n: numpyro.sample(n, dist.Uniform(-p, p)) for n in SOURCE_SHIFT_SITES}
        return lens + Shift(**shift)

    def __repr__(self):
        return f"with_source_shift({self.lens_model!r}, pixel_scale={self.pixel_scale})"


def with_source_shift(lens_model: Callable, pixel_scale: float) -> Callable:
    """A lens model that also samples the source grid's sub-pixel placement (see the module docs).

    Parameters
    ----------
    lens_model
        A NumPyro lens model returning a mass lens (:mod:`blindlens.numpyro_model`); it must not
        have sites named ``alpha_x`` or ``alpha_y``.
    pixel_scale
        The source grid's pixel scale [arcsec]: ``alpha_x, alpha_y ~ U(-pixel_scale, pixel_scale)``.

    Returns
    -------
    A NumPyro model returning ``lens + Shift(alpha_x, alpha_y)``.
    """
    from .numpyro_model import lens_site_names

    pixel_scale = float(pixel_scale)
    if not pixel_scale > 0:
        raise ValueError(f"with_source_shift needs a positive source pixel scale in arcsec, got {pixel_scale}.")
    clash = sorted(set(lens_site_names(lens_model)) & set(SOURCE_SHIFT_SITES))
    if clash:
        raise ValueError(f"the lens model already has site(s) {clash}; with_source_shift adds alpha_x, alpha_y: "
                         "rename them in your model.")
    return _WithSourceShift(lens_model, pixel_scale)
