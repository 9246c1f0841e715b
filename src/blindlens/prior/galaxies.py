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

Two populations:

* ``"disk"`` (:class:`GalaxyRecipe`): the disk + clumps + bulge galaxies above, the training set
  of the shipped 32 x 32 prior.
* ``"broad"`` (:class:`BroadGalaxyRecipe`): a mixture that also holds compact Sersic galaxies,
  irregular clump-dominated galaxies with few large knots, and two- or three-component
  systems (mergers, companions), over a wider range of sizes (half-light radii 0.03-0.8") and
  axis ratios (0.15-1). The high-resolution prior is trained on it.

This is the only module that imports GalSim (an optional extra: ``pip install blindlens[train]``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["GalaxyRecipe", "BroadGalaxyRecipe", "POPULATIONS", "draw_procedural_galaxies"]


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
    peak_pixel_scale: float = 0.05

    def __init__(self, image_size: int | None = None, pixel_scale: float | None = None):
        """Optionally another grid over the same field: ``image_size`` pixels of ``pixel_scale``
        arcsec (e.g. 128 of 0.025"). The galaxy parameters (arcsec) and the random stream do not
        change, and the brightness units are those of ``peak_pixel_scale``: the brightest pixel of
        the image averaged to that scale is the drawn peak, so a galaxy drawn finer has the same
        surface brightness as at 0.05"."""
        if image_size is not None:
            self.image_size = int(image_size)
        if pixel_scale is not None:
            self.pixel_scale = float(pixel_scale)
        ratio = self.peak_pixel_scale / self.pixel_scale if self.pixel_scale > 0 else 0.0
        whole = round(ratio)
        if self.image_size < 4 or whole < 1 or abs(ratio - whole) > 1e-6 or self.image_size % whole:
            raise ValueError(
                f"pixel_scale {self.pixel_scale} must divide {self.peak_pixel_scale}\" (the brightness "
                f"reference) into whole pixels across image_size {self.image_size}; e.g. 0.05 or 0.025."
            )


class BroadGalaxyRecipe(GalaxyRecipe):
    """The ``"broad"`` population: a mixture of four kinds of galaxy (angles in arcsec).

    ``kind_weights`` are the probabilities of (disk, compact, irregular, multi-component);
    the disk kind is :class:`GalaxyRecipe` with the wider ``disk_half_light_radius`` and
    ``disk_axis_ratio`` below.
    """

    kind_weights: tuple[float, float, float, float] = (0.35, 0.2, 0.25, 0.2)
    disk_half_light_radius: tuple[float, float] = (0.1, 0.8)
    disk_axis_ratio: tuple[float, float] = (0.15, 1.0)
    compact_half_light_radius: tuple[float, float] = (0.03, 0.15)
    compact_sersic_n: tuple[float, float] = (0.5, 4.0)
    compact_axis_ratio: tuple[float, float] = (0.4, 1.0)
    irregular_knots: tuple[int, int] = (3, 20)
    irregular_half_light_radius: tuple[float, float] = (0.15, 0.6)
    irregular_knot_fraction: tuple[float, float] = (0.5, 0.9)
    multi_components: tuple[int, int] = (2, 3)
    multi_separation: float = 0.6
    multi_flux_ratio: tuple[float, float] = (0.2, 1.0)


def _import_galsim():
    try:
        import galsim
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Procedural training galaxies need GalSim: pip install 'blindlens[train]' "
            "(or pip install galsim)."
        ) from err
    return galsim


def _disk_components(galsim, rng: np.random.Generator, recipe: GalaxyRecipe) -> list:
    """Disk, clumps and bulge of unit total flux, and the galaxy's random shift (arcsec)."""
    u = rng.uniform
    r_d = u(*recipe.disk_half_light_radius)
    inclination = galsim.Shear(q=u(*recipe.disk_axis_ratio), beta=u(0, np.pi) * galsim.radians)
    f_knots = u(*recipe.knot_flux_fraction)
    b_t = u(*recipe.bulge_to_total)
    shift = u(-recipe.max_shift, recipe.max_shift, size=2)  # drawn here: keeps the disk population's stream
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
    return [disk.shear(inclination), knots.shear(inclination), bulge], shift


def _compact_components(galsim, rng: np.random.Generator, recipe: BroadGalaxyRecipe) -> list:
    u = rng.uniform
    galaxy = galsim.Sersic(n=u(*recipe.compact_sersic_n), half_light_radius=u(*recipe.compact_half_light_radius))
    return [galaxy.shear(q=u(*recipe.compact_axis_ratio), beta=u(0, np.pi) * galsim.radians)]


def _irregular_components(galsim, rng: np.random.Generator, recipe: BroadGalaxyRecipe) -> list:
    u = rng.uniform
    r = u(*recipe.irregular_half_light_radius)
    f_knots = u(*recipe.irregular_knot_fraction)
    shear = galsim.Shear(q=u(*recipe.disk_axis_ratio), beta=u(0, np.pi) * galsim.radians)
    seed = int(rng.integers(1, 2**31 - 1))
    knots = galsim.RandomKnots(
        int(rng.integers(*recipe.irregular_knots)), half_light_radius=r, flux=f_knots, rng=galsim.BaseDeviate(seed)
    )
    diffuse = galsim.Exponential(half_light_radius=r, flux=1 - f_knots)
    return [diffuse.shear(shear), knots.shear(shear)]


def _single_kind(galsim, rng: np.random.Generator, recipe: GalaxyRecipe, kind: int) -> list:
    if kind == 1:
        return _compact_components(galsim, rng, recipe)
    if kind == 2:
        return _irregular_components(galsim, rng, recipe)
    return _disk_components(galsim, rng, recipe)[0]


def _components(galsim, rng: np.random.Generator, recipe: GalaxyRecipe) -> tuple[list, np.ndarray]:
    """The galaxy's GalSim components and its shift (arcsec)."""
    if not isinstance(recipe, BroadGalaxyRecipe):
        return _disk_components(galsim, rng, recipe)
    kind = int(rng.choice(4, p=np.asarray(recipe.kind_weights) / sum(recipe.kind_weights)))
    shift = rng.uniform(-recipe.max_shift, recipe.max_shift, size=2)
    if kind < 3:
        return _single_kind(galsim, rng, recipe, kind), shift
    parts = []
    for i in range(int(rng.integers(recipe.multi_components[0], recipe.multi_components[1] + 1))):
        flux = 1.0 if i == 0 else rng.uniform(*recipe.multi_flux_ratio)
        offset = (0.0, 0.0) if i == 0 else rng.uniform(-recipe.multi_separation, recipe.multi_separation, size=2)
        for c in _single_kind(galsim, rng, recipe, int(rng.integers(0, 3))):
            parts.append((c * flux).shift(*offset))
    return parts, shift


def _draw_one(galsim, rng: np.random.Generator, recipe: GalaxyRecipe) -> np.ndarray:
    u = rng.uniform
    n = recipe.image_size
    scale = recipe.pixel_scale
    psf = galsim.Gaussian(fwhm=recipe.psf_fwhm)
    components, (dx, dy) = _components(galsim, rng, recipe)
    image = np.zeros((n, n))
    for component in components:
        if component.flux <= 0:
            continue
        obj = galsim.Convolve(component.shift(dx, dy), psf)
        image += obj.drawImage(nx=n, ny=n, scale=scale, method="no_pixel").array
    # GalSim arrays are [row=y, col=x] with row 0 at the most negative y, as in blindlens.
    peak = np.exp(u(np.log(recipe.peak_range[0]), np.log(recipe.peak_range[1])))
    b = round(recipe.peak_pixel_scale / scale)
    reference = image.reshape(n // b, b, n // b, b).mean(axis=(1, 3)).max()  # b = 1: image.max()
    return (image * (peak / reference)).astype(np.float32)


POPULATIONS = {"disk": GalaxyRecipe, "broad": BroadGalaxyRecipe}


def draw_procedural_galaxies(
    num: int,
    *,
    seed: int,
    start: int = 0,
    recipe: GalaxyRecipe | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Draw galaxies ``start .. start+num-1`` of the population with this ``seed``.

    Returns ``(num, image_size, image_size)`` float32 (64 x 64 by default). Galaxy ``i``
    depends only on ``(seed, i)``, so a set can be drawn in parallel chunks with different
    ``start`` and concatenated.
    """
    galsim = _import_galsim()
    recipe = recipe or GalaxyRecipe()
    if isinstance(recipe, type):
        recipe = recipe()
    out = np.empty((num, recipe.image_size, recipe.image_size), np.float32)
    children = np.random.SeedSequence(seed).spawn(start + num)[start:]
    iterator = range(num)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="galaxies", unit="gal")
    for i in iterator:
        out[i] = _draw_one(galsim, np.random.default_rng(children[i]), recipe)
    return out
