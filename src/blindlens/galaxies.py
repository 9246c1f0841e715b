"""Procedural training galaxies drawn with GalSim.

Each galaxy is an inclined exponential disk with star-forming clumps (``galsim.RandomKnots``,
which follow the disk profile and share its inclination), plus an elliptical Sersic bulge,
shifted by a random sub-arcsecond offset and convolved with a Gaussian PSF, drawn on a
64 x 64 grid of 0.05"/pixel (an HST-like source plane). The recipe follows
``data-and-validation.md`` A.3; drawing the three components separately and summing the
images gives the same picture as drawing their sum (convolution is linear) at about a fifth
of the cost, because GalSim then sizes each FFT for one component instead of the worst case.

Surface brightness is normalised per galaxy: the brightest pixel is ``peak``, drawn
log-uniformly in ``peak_range`` (data units), so the prior covers a decade of brightness.

This is the only module that imports GalSim (an optional extra: ``pip install blindlens[train]``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["GalaxyRecipe", "draw_procedural_galaxies"]


class GalaxyRecipe:
    """Parameter ranges of the procedural galaxy population (all angles in arcsec).

    Attributes are plain floats/tuples; see :func:`draw_procedural_galaxies`.
    """

    image_size: int = 64
    pixel_scale: float = 0.05
    disk_half_light_radius: tuple[float, float] = (0.2, 0.6)
    disk_axis_ratio: tuple[float, float] = (0.2, 1.0)
    knots: tuple[int, int] = (10, 100)
    knot_flux_fraction: tuple[float, float] = (0.1, 0.5)
    bulge_sersic_n: tuple[float, float] = (2.5, 4.0)
    bulge_radius_fraction: tuple[float, float] = (0.2, 0.5)
    bulge_to_total: tuple[float, float] = (0.0, 0.4)
    bulge_axis_ratio: tuple[float, float] = (0.6, 1.0)
    max_shift: float = 0.2
    psf_fwhm: float = 0.08
    peak_range: tuple[float, float] = (0.5, 2.0)


def _import_galsim():
    try:
        import galsim
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Procedural training galaxies need GalSim: pip install 'blindlens[train]' "
            "(or pip install galsim)."
        ) from err
    return galsim


def _draw_one(galsim, rng: np.random.Generator, recipe: GalaxyRecipe) -> np.ndarray:
    u = rng.uniform
    n = recipe.image_size
    scale = recipe.pixel_scale
    psf = galsim.Gaussian(fwhm=recipe.psf_fwhm)
    r_d = u(*recipe.disk_half_light_radius)
    inclination = galsim.Shear(q=u(*recipe.disk_axis_ratio), beta=u(0, np.pi) * galsim.radians)
    f_knots = u(*recipe.knot_flux_fraction)
    b_t = u(*recipe.bulge_to_total)
    dx, dy = u(-recipe.max_shift, recipe.max_shift, size=2)
    seed = int(rng.integers(1, 2**31 - 1))

    disk = galsim.Exponential(half_light_radius=r_d, flux=(1 - b_t) * (1 - f_knots))
    knots = galsim.RandomKnots(
        int(rng.integers(*recipe.knots)),
        half_light_radius=r_d,
        flux=(1 - b_t) * f_knots,
        rng=galsim.BaseDeviate(seed),
    )
    bulge = galsim.Sersic(
        n=u(*recipe.bulge_sersic_n),
        half_light_radius=u(*recipe.bulge_radius_fraction) * r_d,
        flux=b_t,
    ).shear(q=u(*recipe.bulge_axis_ratio), beta=u(0, np.pi) * galsim.radians)

    image = np.zeros((n, n))
    for component in (disk.shear(inclination), knots.shear(inclination), bulge):
        if component.flux <= 0:
            continue
        obj = galsim.Convolve(component.shift(dx, dy), psf)
        image += obj.drawImage(nx=n, ny=n, scale=scale, method="no_pixel").array
    # GalSim arrays are [row=y, col=x] with row 0 at the most negative y, as in blindlens.
    peak = np.exp(u(np.log(recipe.peak_range[0]), np.log(recipe.peak_range[1])))
    return (image * (peak / image.max())).astype(np.float32)


def draw_procedural_galaxies(
    num: int,
    *,
    seed: int,
    start: int = 0,
    recipe: GalaxyRecipe | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Draw galaxies ``start .. start+num-1`` of the population with this ``seed``.

    Returns ``(num, 64, 64)`` float32. Galaxy ``i`` depends only on ``(seed, i)``, so a set can
    be drawn in parallel chunks with different ``start`` and concatenated.
    """
    galsim = _import_galsim()
    recipe = recipe or GalaxyRecipe()
    out = np.empty((num, recipe.image_size, recipe.image_size), np.float32)
    children = np.random.SeedSequence(seed).spawn(start + num)[start:]
    iterator = range(num)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="galaxies", unit="gal")
    for i in iterator:
        out[i] = _draw_one(galsim, np.random.default_rng(children[i]), recipe)
    return out
