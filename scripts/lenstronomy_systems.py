"""Lens systems simulated independently with lenstronomy, for the cold-start study (issue 14).

Each system ``i`` (with a ``seed``) is a held-out source galaxy at 0.05"/pixel lensed by an SIE plus
external shear and observed with lenstronomy's ``ImageModel``, not with blindlens's own operator:

* **source**: 64 x 64 at 0.05"/pixel (3.2"), surface brightness in data units (peak 0.5-2),
  centred at a random offset within +-0.1" per axis. Populations:

  - ``"broad"``: ``draw_procedural_galaxies(1, seed=12, start=i, recipe=BroadGalaxyRecipe)``
    (the high-resolution prior trained on seed 11; 12 is held out);
  - ``"disk"``: ``draw_procedural_galaxies(1, seed=2, start=i, recipe=GalaxyRecipe)`` (held out);
  - ``"xdf"``: stamp ``i`` cut from scikit-image's Hubble XDF JPEG
    (``skimage.data.hubble_deep_field()``, shipped inside the scikit-image wheel, no download),
    used as real, out-of-distribution morphology only (8-bit, stretched, no flux calibration;
    ``../shared/research/data-and-validation.md`` A.1): the JPEG's ~0.13"/px pixels are taken as
    0.05"/px source pixels and the stamp is rescaled to a peak drawn like the procedural ones.

* **lens** (lenstronomy names, drawn per system from a NumPy generator seeded by ``(seed, i)``,
  the same for every population): ``SIE`` with ``theta_E ~ U(0.8, 1.6)"``,
  ``e1, e2 ~ U(-0.2, 0.2)``, ``center_x, center_y ~ U(-0.05, 0.05)"``; ``SHEAR`` with
  ``gamma1, gamma2 ~ U(-0.05, 0.05)`` about (0, 0).

* **observation**: 96 x 96 pixels of 0.05" centred on (0, 0); Gaussian PSF of FWHM 0.1" (an 11 x 11
  pixel kernel from lenstronomy's ``kernel_gaussian``, the same kernel written to the file);
  supersampling factor 3 (``supersampling_convolution=False``, as blindlens); source as
  lenstronomy ``INTERPOL`` light at its own 0.05" scale; i.i.d. Gaussian noise with sigma such that
  the peak SNR (noiseless peak / sigma) is ``U(25, 77)``.

Conventions (``docs/conventions.md``): blindlens pixel ``(j, i)`` of an ``(ny, nx)`` grid lies at
``x = cx + (i - (nx - 1)/2) * d``, ``y = cy + (j - (ny - 1)/2) * d`` (rows = y, no RA flip). The
lenstronomy ``PixelGrid`` below uses ``transform_pix2angle = diag(d, d)`` and
``ra_at_xy_0 = dec_at_xy_0 = -(n - 1)/2 * d``, and lenstronomy images are indexed
``[y_pix, x_pix]``, so the two agree pixel for pixel. ``INTERPOL`` reads its ``image`` as
``[row = y, col = x]`` surface brightness per arcsec^2 centred at ``(center_x, center_y)`` with
``scale`` arcsec per pixel (bilinear, one ring of zeros outside): the blindlens source convention.
``ImageModel`` returns flux per pixel (surface brightness x pixel area), so the image is divided by
``d**2`` to give surface brightness in the source's units, as blindlens expects. ``--check``
verifies all of this numerically (an unlensed total-flux test and an image-by-image comparison with
blindlens's ``LensingOperator``).

Writes (:func:`write_system`) ``obs.fits`` in the format of
``blindlens.observation.load_observation`` (``PIXSCALE``, ``NOISE``, ``PSF``) and ``truth.npz``
(``blindlens.simulation.save_truth`` keys, read by ``blindlens sample --truth``) plus
``true_chi2_per_n`` (the true lens and source's own residual chi^2/N: data against the noiseless
lenstronomy image), ``peak_snr``, ``population``, ``system`` and ``source_info``.

Import it from a sibling script (``from lenstronomy_systems import simulate_system``); run
``python scripts/lenstronomy_systems.py --check`` for the convention check.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

IMAGE_N = 96
PIXEL_SCALE = 0.05
PSF_FWHM = 0.1
PSF_SIZE = 11
SUPERSAMPLING = 3
SOURCE_N = 64
SOURCE_SCALE = 0.05
SOURCE_OFFSET = 0.1
SNR_RANGE = (25.0, 77.0)
PEAK_RANGE = (0.5, 2.0)  # data units, as the procedural galaxies (GalaxyRecipe.peak_range)
HELD_OUT_SEEDS = {"broad": 12, "disk": 2}
POPULATIONS = ("broad", "disk", "xdf")
LENS_RANGES = {
    "theta_E": (0.8, 1.6),
    "e1": (-0.2, 0.2),
    "e2": (-0.2, 0.2),
    "center_x": (-0.05, 0.05),
    "center_y": (-0.05, 0.05),
    "gamma1": (-0.05, 0.05),
    "gamma2": (-0.05, 0.05),
}
LENS_NAMES = tuple(LENS_RANGES)
SIE_NAMES = ("theta_E", "e1", "e2", "center_x", "center_y")
LIGHT_RANGES = {"R_sersic": (0.3, 0.8), "n_sersic": (2.0, 4.0), "e1": (-0.15, 0.15), "e2": (-0.15, 0.15)}
"""Deflector light (``--lens-light``): lenstronomy ``SERSIC_ELLIPSE`` at the mass centre."""
LIGHT_TO_ARCS = (5.0, 20.0)
"""The light's noiseless peak over the arcs' (drawn uniformly): a deflector that outshines its arcs."""
LIGHT_SUPERSAMPLING = 24
"""Sub-pixels per axis of the deflector light's image (everywhere): a Sérsic core is too steep for the
arcs' 3 x 3 (lenstronomy at 3 is off the converged pixel integral by chi^2 up to 150 on these systems,
at 2 by up to 7e4; docs/real_data.md), and the truth must be the pixel integral a real galaxy gives."""

__all__ = [
    "simulate_system",
    "write_system",
    "draw_lens",
    "draw_source",
    "psf_kernel",
    "mirror_system",
    "lenstronomy_image",
    "xdf_stamps",
    "write_markdown",
    "LENS_NAMES",
    "LENS_RANGES",
    "POPULATIONS",
]


# ------------------------------------------------------------------------------- ingredients


def system_rng(i: int, seed: int) -> np.random.Generator:
    """The generator of system ``i``: lens, source offset, XDF peak and noise all come from it."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(i)]))


def draw_lens(rng: np.random.Generator) -> dict[str, float]:
    """SIE + shear parameters (lenstronomy names), uniform in :data:`LENS_RANGES`."""
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in LENS_RANGES.items()}


def psf_kernel() -> np.ndarray:
    """11 x 11 Gaussian kernel of FWHM 0.1" at 0.05"/pixel, unit sum (lenstronomy's kernel_gaussian)."""
    from lenstronomy.Util.kernel_util import kernel_gaussian

    k = np.asarray(kernel_gaussian(PSF_SIZE, PIXEL_SCALE, PSF_FWHM), np.float64)
    return k / k.sum()


@functools.lru_cache(maxsize=1)
def xdf_stamps() -> tuple[np.ndarray, ...]:
    """64 x 64 stamps of isolated sources in scikit-image's Hubble XDF JPEG (peak 1, rows = +y).

    Detection as in data-and-validation.md A.1: grey = mean of the RGB channels / 255, sky = median,
    sigma = 1.4826 x MAD; connected pixels > 3 sigma above sky with area >= 50 px, at most 48 px
    across, whose 64 x 64 stamp (centred on the flux-weighted centroid) lies inside the frame, and
    not saturated (max grey < 250/255, which drops the brightest stars). Each stamp keeps only its
    own segment grown by 3 pixels (neighbours and sky set to 0), sky-subtracted and clipped at 0.
    Stamps are ordered by label (raster order of the segments), so stamp ``i`` is fixed.
    """
    try:
        from skimage.data import hubble_deep_field
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'xdf' population needs scikit-image (`pip install scikit-image`; its wheel ships "
            "the Hubble XDF JPEG, no download). Use --population broad or disk without it."
        ) from err
    from scipy import ndimage

    grey = np.asarray(hubble_deep_field(), np.float64).mean(axis=-1) / 255.0
    sky = float(np.median(grey))
    sigma = 1.4826 * float(np.median(np.abs(grey - sky)))
    labels, _ = ndimage.label(grey - sky > 3 * sigma)
    half = SOURCE_N // 2
    stamps = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        seg = labels[sl] == lab
        area = int(seg.sum())
        height, width = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if area < 50 or max(height, width) > 48:
            continue
        if grey[sl][seg].max() >= 250 / 255:
            continue
        w = np.where(seg, grey[sl] - sky, 0.0)
        yy, xx = np.mgrid[sl[0], sl[1]]
        cy, cx = int(round((w * yy).sum() / w.sum())), int(round((w * xx).sum() / w.sum()))
        if cy - half < 0 or cx - half < 0 or cy + half > grey.shape[0] or cx + half > grey.shape[1]:
            continue
        win = (slice(cy - half, cy + half), slice(cx - half, cx + half))
        own = ndimage.binary_dilation(labels[win] == lab, iterations=3)
        stamp = np.clip(grey[win] - sky, 0.0, None) * own
        stamps.append((stamp / stamp.max())[::-1].copy())  # JPEG row 0 is the top: flip so rows = +y
    return tuple(stamps)


def draw_source(i: int, population: str, rng: np.random.Generator, oversample: int = 1) -> tuple[np.ndarray, dict]:
    """Held-out source ``i`` of ``population``: (float64 surface brightness, info dict), 64 x 64 at
    0.05"; a procedural galaxy with ``oversample = k`` is the same galaxy drawn on a ``k`` times finer
    grid over the same field (``64k x 64k`` at ``0.05/k``"), so that no 0.05" grid is its own."""
    if population in HELD_OUT_SEEDS:
        from blindlens import galaxies

        recipe_name = {"broad": "BroadGalaxyRecipe", "disk": "GalaxyRecipe"}[population]
        recipe = getattr(galaxies, recipe_name, None)
        if recipe is None:  # pragma: no cover - older blindlens
            raise ImportError(f"blindlens.galaxies has no {recipe_name}; update blindlens for population {population!r}.")
        seed = HELD_OUT_SEEDS[population]
        recipe = recipe() if oversample == 1 else recipe(image_size=SOURCE_N * oversample,
                                                           pixel_scale=SOURCE_SCALE / oversample)
        src = galaxies.draw_procedural_galaxies(1, seed=seed, start=int(i), recipe=recipe)[0]
        info = {"kind": "procedural", "recipe": recipe_name, "galaxy_seed": seed, "galaxy_index": int(i),
                "oversample": int(oversample)}
        return np.asarray(src, np.float64), info
    if oversample != 1:
        raise ValueError("oversample > 1 draws procedural galaxies finer; the XDF stamps have one pixel scale.")
    if population == "xdf":
        stamps = xdf_stamps()
        if not 0 <= i < len(stamps):
            raise ValueError(f"the XDF gives {len(stamps)} stamps; system {i} is out of range.")
        lo, hi = PEAK_RANGE
        peak = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return stamps[i] * peak, {"kind": "xdf", "stamp": int(i), "num_stamps": len(stamps), "peak": peak}
    raise ValueError(f"unknown population {population!r}; use one of {POPULATIONS}.")


# ------------------------------------------------------------------------------- lenstronomy


def lenstronomy_image(lens: dict | None, source: np.ndarray | None, source_center, *, kernel=None,
                      supersampling: int = SUPERSAMPLING, n_pix: int = IMAGE_N, pixel_scale: float = PIXEL_SCALE,
                      source_scale: float = SOURCE_SCALE, lens_light: dict | None = None) -> np.ndarray:
    """Noiseless lenstronomy image in surface brightness (flux per pixel / pixel area), [row=y, col=x].

    ``lens=None`` gives the unlensed source (no deflection); ``kernel=None`` no PSF;
    ``source=None`` no source; ``lens_light`` (``SERSIC_ELLIPSE`` keywords) adds deflector light.
    """
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    d = float(pixel_scale)
    corner = -(n_pix - 1) / 2 * d  # blindlens: pixel 0 centred at center - (n-1)/2 * d, rows = y
    data = ImageData(image_data=np.zeros((n_pix, n_pix)), transform_pix2angle=np.array([[d, 0.0], [0.0, d]]),
                     ra_at_xy_0=corner, dec_at_xy_0=corner)
    psf = PSF(psf_type="NONE") if kernel is None else PSF(psf_type="PIXEL", kernel_point_source=np.asarray(kernel))
    numerics = {"supersampling_factor": int(supersampling), "supersampling_convolution": False}
    # fresh LightModel per call: INTERPOL caches its interpolator on the instance
    source_model = LightModel(["INTERPOL"])
    kw_source = [{"image": np.asarray(source, np.float64), "amp": 1.0, "center_x": float(source_center[0]),
                  "center_y": float(source_center[1]), "phi_G": 0.0, "scale": float(source_scale)}]
    light = {}
    if lens_light is not None:
        light = {"lens_light_model_class": LightModel(["SERSIC_ELLIPSE"])}
    kw_light = [{k: float(v) for k, v in lens_light.items()}] if lens_light is not None else None
    if lens is None:
        model = ImageModel(data, psf, lens_model_class=LensModel([]), source_model_class=source_model,
                           kwargs_numerics=numerics, **light)
        flux = model.image(kwargs_lens=[], kwargs_source=kw_source, kwargs_lens_light=kw_light,
                           source_add=source is not None, lens_light_add=lens_light is not None)
    else:
        kw_lens = [{k: float(lens[k]) for k in SIE_NAMES},
                   {"gamma1": float(lens["gamma1"]), "gamma2": float(lens["gamma2"]), "ra_0": 0.0, "dec_0": 0.0}]
        model = ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"]), source_model_class=source_model,
                           kwargs_numerics=numerics, **light)
        flux = model.image(kwargs_lens=kw_lens, kwargs_source=kw_source, kwargs_lens_light=kw_light,
                           source_add=source is not None, lens_light_add=lens_light is not None)
    return np.asarray(flux, np.float64) / d**2


def write_markdown(path, lines: list[str]) -> None:
    """Write a study's markdown ``lines`` to ``path`` (the tables under docs/) and say so."""
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


def blindlens_lens(lens: dict, lens_light: dict | None = None):
    """The same lens as a blindlens Module (``SIE(...) + ExternalShear(...)``), with its deflector light
    (lenstronomy ``SERSIC_ELLIPSE`` keywords) if given, in the study's surface-brightness units."""
    from blindlens.lens_models import SIE, ExternalShear

    mass = SIE(**{k: float(lens[k]) for k in SIE_NAMES}) + ExternalShear(gamma1=float(lens["gamma1"]),
                                                                         gamma2=float(lens["gamma2"]))
    if lens_light is None:
        return mass
    from blindlens.light_profiles import LensLight, LensWithLight, SersicEllipse

    # lenstronomy's image is flux per pixel, the study's is that over the pixel area, and blindlens's
    # light imager gives flux per pixel of its amp: the same light in study units has amp / d^2
    values = {k: float(v) for k, v in lens_light.items()}
    values["amp"] /= PIXEL_SCALE**2
    return LensWithLight(mass, LensLight([SersicEllipse(**values)]))


def draw_lens_light(i: int, seed: int, lens: dict, arcs_peak: float) -> dict:
    """Deflector light of system ``i`` (``--lens-light``): shape from :data:`LIGHT_RANGES` at the mass
    centre, amplitude such that its noiseless peak is :data:`LIGHT_TO_ARCS` times ``arcs_peak``. A
    generator of its own, so the rest of the system is the one without light."""
    rng = np.random.default_rng((seed, i, 1729))
    light = {k: float(rng.uniform(*r)) for k, r in LIGHT_RANGES.items()}
    light.update(center_x=float(lens["center_x"]), center_y=float(lens["center_y"]), amp=1.0)
    ratio = float(rng.uniform(*LIGHT_TO_ARCS))
    unit_peak = lenstronomy_image(None, None, (0.0, 0.0), kernel=psf_kernel(), lens_light=light).max()
    light["amp"] = float(ratio * arcs_peak / unit_peak)
    return light


def simulate_system(i: int, population: str = "broad", seed: int = 0, lens_light: bool = False,
                    source_oversample: int = 1) -> dict:
    """Simulate system ``i``: returns a dict with ``image``, ``noise_sigma``, ``psf``, ``noiseless``,
    ``lens`` (dict), ``source``, ``source_center``, ``peak_snr``, ``true_chi2_per_n``, ``source_info``,
    ``population``, ``system``, ``seed`` and ``lens_light`` (``None``, or its ``SERSIC_ELLIPSE``
    keywords). Deterministic in ``(i, population, seed, lens_light)``; with ``lens_light`` the same
    system plus deflector light (:func:`draw_lens_light`), the noise still set by the arcs' peak;
    ``source_oversample = k``: the same galaxy drawn k times finer (:func:`draw_source`), its
    ``source_scale`` in the returned dict."""
    rng = system_rng(i, seed)
    lens = draw_lens(rng)
    source_center = tuple(float(c) for c in rng.uniform(-SOURCE_OFFSET, SOURCE_OFFSET, size=2))
    snr = float(rng.uniform(*SNR_RANGE))
    noise_rng = np.random.default_rng(rng.integers(2**63))
    source, info = draw_source(i, population, rng, oversample=source_oversample)
    source_scale = SOURCE_SCALE / source_oversample
    kernel = psf_kernel()
    noiseless = lenstronomy_image(lens, source, source_center, kernel=kernel, source_scale=source_scale)
    sigma = float(noiseless.max() / snr)
    light = draw_lens_light(i, seed, lens, float(noiseless.max())) if lens_light else None
    if light is not None:
        noiseless = noiseless + lenstronomy_image(lens, None, source_center, kernel=kernel, lens_light=light,
                                                  supersampling=LIGHT_SUPERSAMPLING)
    image = noiseless + sigma * noise_rng.standard_normal(noiseless.shape)
    # the file stores the image in blindlens's working precision: chi^2 of the truth from what is written
    image = image.astype(np.float32).astype(np.float64)
    true_chi2 = float(np.mean(((image - noiseless) / sigma) ** 2))
    return {
        "system": int(i), "population": population, "seed": int(seed), "lens": lens, "source": source,
        "source_center": source_center, "source_info": info, "peak_snr": snr, "noise_sigma": sigma,
        "psf": kernel, "noiseless": noiseless, "image": image, "true_chi2_per_n": true_chi2, "lens_light": light,
        "source_scale": source_scale,
    }


def mirror_system(system: dict) -> dict:
    """The same system reflected across the line x = y (a symmetry check of the inference).

    Swapping the axes maps every image to its transpose, ``(x, y) -> (y, x)``, and the lens to
    ``e1 -> -e1``, ``gamma1 -> -gamma1``, ``center_x <-> center_y`` (``e2``, ``gamma2``, ``theta_E``
    unchanged: a position angle ``phi`` becomes ``pi/2 - phi``). The noise realisation is transposed
    with the image, so the mirrored system's exact posterior is the original's, reflected: an inference
    with no preferred axis gives z-scores of ``e1`` and ``gamma1`` of the opposite sign, the others equal.
    """
    out = dict(system)
    for key in ("image", "noiseless", "psf", "source"):
        out[key] = np.ascontiguousarray(np.asarray(system[key]).T)
    lens = dict(system["lens"])
    lens.update(e1=-lens["e1"], gamma1=-lens["gamma1"], center_x=lens["center_y"], center_y=lens["center_x"])
    out["lens"] = lens
    out["source_center"] = (system["source_center"][1], system["source_center"][0])
    if system.get("lens_light") is not None:
        light = dict(system["lens_light"])
        light.update(e1=-light["e1"], center_x=light["center_y"], center_y=light["center_x"])
        out["lens_light"] = light
    out["source_info"] = {**system["source_info"], "mirrored": True}
    return out


def write_system(system: dict, folder) -> tuple[Path, Path]:
    """Write ``obs.fits`` and ``truth.npz`` into ``folder``; returns their paths."""
    from blindlens.observation import Observation, save_observation
    from blindlens.simulation import save_truth

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    obs = Observation(system["image"], system["noise_sigma"], system["psf"], PIXEL_SCALE)
    obs_path = save_observation(obs, folder / "obs.fits")
    truth_path = save_truth(folder / "truth.npz", blindlens_lens(system["lens"], system.get("lens_light")),
                            system["source"], system.get("source_scale", SOURCE_SCALE),
                            system["noiseless"], PIXEL_SCALE, source_center=system["source_center"],
                            supersampling=SUPERSAMPLING, noise_sigma=system["noise_sigma"], psf_fwhm=PSF_FWHM,
                            seed=system["seed"])
    with np.load(truth_path, allow_pickle=False) as f:  # add the study's keys (load_truth reads all keys)
        arrays = {k: f[k] for k in f.files}
    arrays.update(
        true_chi2_per_n=np.float64(system["true_chi2_per_n"]), peak_snr=np.float64(system["peak_snr"]),
        population=np.asarray(system["population"]), system=np.int64(system["system"]),
        source_info=np.asarray(json.dumps(system["source_info"])), simulator=np.asarray("lenstronomy"),
    )
    tmp = truth_path.with_name(truth_path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(truth_path)
    return obs_path, truth_path


# ------------------------------------------------------------------------------- --check


def check(i: int = 0, population: str = "broad", seed: int = 0) -> int:
    """Unlensed flux test and lenstronomy vs blindlens image of one system; prints the numbers."""
    import jax.numpy as jnp

    from blindlens.grid import PixelGrid
    from blindlens.lensing_operator import LensingOperator
    from blindlens.psf import gaussian_psf

    s = simulate_system(i, population, seed)
    src, center = s["source"], s["source_center"]
    print(f"system {i} ({population}, seed {seed}): lens " + ", ".join(f"{k} {v:+.4f}" for k, v in s["lens"].items()))
    print(f"  source centre ({center[0]:+.4f}, {center[1]:+.4f})\", peak SNR {s['peak_snr']:.1f}, "
          f"noise sigma {s['noise_sigma']:.4g}, true chi^2/N {s['true_chi2_per_n']:.4f}")

    # 1. INTERPOL amplitude convention: unlensed, no PSF, total flux of lenstronomy's image vs the source's
    flat = lenstronomy_image(None, src, center, kernel=None)
    flux_image = flat.sum() * PIXEL_SCALE**2
    flux_source = src.sum() * SOURCE_SCALE**2
    print(f"  unlensed total flux: image {flux_image:.6f} vs source sum x area {flux_source:.6f} "
          f"(ratio {flux_image / flux_source:.6f}; 1 = INTERPOL takes surface brightness, image / d^2 is SB)")
    # orientation: the unlensed image's brightest pixel and flux centroid must sit where the source's are
    gx, gy = PixelGrid((IMAGE_N, IMAGE_N), PIXEL_SCALE).coordinates()
    sx, sy = PixelGrid(src.shape, SOURCE_SCALE, center).coordinates()
    c_img = (float((flat * np.asarray(gx)).sum() / flat.sum()), float((flat * np.asarray(gy)).sum() / flat.sum()))
    c_src = (float((src * np.asarray(sx)).sum() / src.sum()), float((src * np.asarray(sy)).sum() / src.sum()))
    print(f"  unlensed flux centroid: image ({c_img[0]:+.4f}, {c_img[1]:+.4f})\" vs source "
          f"({c_src[0]:+.4f}, {c_src[1]:+.4f})\" (blindlens grid coordinates)")

    # 2. lensed, PSF, supersampling 3: lenstronomy vs blindlens's LensingOperator, same lens/source/kernel
    lens = blindlens_lens(s["lens"])
    image_grid = PixelGrid((IMAGE_N, IMAGE_N), PIXEL_SCALE)
    source_grid = PixelGrid(src.shape, SOURCE_SCALE, center)
    ref = s["noiseless"]
    results = {}
    for name, kernel, k in (("same kernel, supersampling 3", s["psf"], SUPERSAMPLING),
                            ("blindlens gaussian_psf, supersampling 3", gaussian_psf(PSF_FWHM, PIXEL_SCALE), SUPERSAMPLING),
                            ("same kernel, blindlens supersampling 2 (CLI default)", s["psf"], 2)):
        op = LensingOperator(lens, image_grid, source_grid, psf=np.asarray(kernel), supersampling=k)
        out = np.asarray(op(jnp.asarray(src, jnp.asarray(0.0).dtype)), np.float64)
        err = np.abs(out - ref)
        results[name] = err.max() / ref.max()
        print(f"  lenstronomy vs blindlens ({name}): max |diff| / peak {err.max() / ref.max():.2e}, "
              f"rms / peak {np.sqrt(np.mean(err**2)) / ref.max():.2e}, flux ratio {out.sum() / ref.sum():.6f}, "
              f"max |diff| / noise sigma {err.max() / s['noise_sigma']:.3f}")
    # a deliberate convention error for contrast: the source transposed (x <-> y)
    op = LensingOperator(lens, image_grid, source_grid, psf=np.asarray(s["psf"]), supersampling=SUPERSAMPLING)
    bad = np.asarray(op(jnp.asarray(src.T, jnp.asarray(0.0).dtype)), np.float64)
    print(f"  (negative control, source transposed: max |diff| / peak {np.abs(bad - ref).max() / ref.max():.2e})")
    # what the remaining mismatch does to the lens: one Gauss-Newton step from the true lens, the true
    # source held, in units of the lens's conditional sd (0 when the two codes agree)
    import jax

    from blindlens.lens_models import SIE, ExternalShear

    names = tuple(LENS_RANGES)
    inner = (slice(6, -6), slice(6, -6))  # lenstronomy convolves within the image: compare off the edge

    def lensed(v):
        lens_v = SIE(**dict(zip(SIE_NAMES, v[:5]))) + ExternalShear(gamma1=v[5], gamma2=v[6])
        return LensingOperator(lens_v, image_grid, source_grid, psf=jnp.asarray(s["psf"]), supersampling=SUPERSAMPLING)(
            jnp.asarray(src, jnp.asarray(0.0).dtype))

    v0 = jnp.asarray([s["lens"][k] for k in names], jnp.asarray(0.0).dtype)
    resid = np.asarray((ref - np.asarray(lensed(v0), np.float64))[inner] / s["noise_sigma"]).ravel()
    jac = np.asarray(jax.jacfwd(lensed)(v0), np.float64)[inner].reshape(-1, len(names)) / s["noise_sigma"]
    fisher = jac.T @ jac
    shift = np.linalg.solve(fisher, jac.T @ resid) / np.sqrt(np.diag(np.linalg.inv(fisher)))
    print(f"  lens bias from the mismatch (true source held), in conditional sd: "
          + ", ".join(f"{k} {b:+.3f}" for k, b in zip(names, shift)))
    # 3. with deflector light (--lens-light): blindlens's light imager in the study's units, amp / d^2
    from blindlens.light_profiles import LensLightImager, light_of, mass_of
    from blindlens.psf import PSF as BlindlensPSF

    lit = simulate_system(i, population, seed, lens_light=True)
    with_light = blindlens_lens(lit["lens"], lit["lens_light"])
    # the light at the simulation's own sub-sampling, plain (the exact comparison); then blindlens's default
    # imager (the arcs' sub-sampling with its refined core) against it, in noise units
    psf_op = BlindlensPSF(np.asarray(lit["psf"]), image_grid.shape)
    imager = LensLightImager(image_grid, psf_op, LIGHT_SUPERSAMPLING, core_supersampling=None)
    light = np.asarray(imager(light_of(with_light)), np.float64)
    for k in (2, SUPERSAMPLING):
        for refined in (False, True):
            im = LensLightImager(image_grid, psf_op, k, **({} if refined else {"core_supersampling": None}))
            diff = (np.asarray(im(light_of(with_light)), np.float64) - light)[6:-6, 6:-6] / lit["noise_sigma"]
            print(f"  blindlens light imager, supersampling {k}{' + refined core' if refined else ', plain'}: "
                  f"chi^2 against the simulation's light {np.sum(diff**2):.2f}")
    op = LensingOperator(mass_of(with_light), image_grid, source_grid, psf=np.asarray(lit["psf"]),
                         supersampling=SUPERSAMPLING)
    model = np.asarray(op(jnp.asarray(src, jnp.asarray(0.0).dtype)), np.float64) + light
    light_err = float(np.abs(model - lit["noiseless"])[inner].max() / lit["noiseless"].max())
    print(f"  with deflector light (peak {light.max() / ref.max():.1f}x the arcs'): max |diff| / peak {light_err:.2e}"
          f" (light per arcsec^2, amp not divided by d^2: {np.abs(model - light + light * PIXEL_SCALE**2 - lit['noiseless'])[inner].max() / lit['noiseless'].max():.2e})")
    ok = (abs(flux_image / flux_source - 1) < 1e-3 and results["same kernel, supersampling 3"] < 1e-2
          and light_err < 1e-2)
    print("check " + ("passed" if ok else "FAILED: a convention differs between lenstronomy and blindlens"))
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare lenstronomy with blindlens's operator on one system")
    p.add_argument("--system", type=int, default=0)
    p.add_argument("--population", choices=POPULATIONS, default="broad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write obs.fits and truth.npz of --system into this folder")
    p.add_argument("--lens-light", action="store_true", help="add a Sérsic deflector 5-20x brighter than the arcs")
    args = p.parse_args(argv)
    if args.check:
        return check(args.system, args.population, args.seed)
    if args.out:
        s = simulate_system(args.system, args.population, args.seed, lens_light=args.lens_light)
        obs, truth = write_system(s, args.out)
        print(f"wrote {obs} and {truth}; true chi^2/N {s['true_chi2_per_n']:.4f}, peak SNR {s['peak_snr']:.1f}")
        return 0
    p.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
