"""Simulated observations: lens a pixelated source, blur, add Gaussian noise, and record the truth.

The model image is ``LensingOperator(lens, image_grid, source_grid, psf, supersampling)(source)``
(:mod:`blindlens.lensing_operator`), so the source array's units carry over to the image
(surface brightness is conserved). Noise is i.i.d. Gaussian with standard deviation
``noise_sigma`` per pixel, drawn with an explicit PRNG key.

Truth files (``<out stem>_truth.npz``) hold: ``lens_toml`` (the lens as TOML text, see
:mod:`blindlens.lens_config`), ``source``, ``source_pixel_scale``, ``source_center``,
``noiseless_image``, ``image_pixel_scale``, ``supersampling``, ``noise_sigma``, ``psf_fwhm`` and
``seed``; :func:`load_truth` reads them back (with the lens as a Module).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Image, PRNGKeyArray, SourceImage
from ..physics.grid import PixelGrid
from ..physics.lensing_operator import LensingOperator
from ..physics.psf import gaussian_psf
from .lens_config import dumps_lens_config, lens_from_config
from .observation import Observation, read_fits_array

__all__ = [
    "simulate_observation",
    "load_source",
    "save_truth",
    "load_truth",
    "truth_path_for",
    "example_lens_path",
    "example_source_path",
    "example_survey_paths",
    "write_example_survey",
    "plot_observation",
]


def example_lens_path() -> Path:
    """Path of the bundled example lens TOML (SIE + shear, theta_E = 1.2")."""
    return Path(str(resources.files("blindlens") / "data" / "example_lens.toml"))


def example_source_path() -> Path:
    """Path of the bundled example source (64 x 64 at 0.05"/pixel), if the package ships it."""
    return Path(str(resources.files("blindlens") / "data" / "example_source.npy"))


EXAMPLE_SURVEY_FILES = {
    "observation": ("example_hst.fits", "hst.fits"),
    "psf": ("example_hst_psf.fits", "psf.fits"),
    "truth": ("example_hst_truth.npz", "hst_truth.npz"),
    "lens": ("example_hst_lens.toml", "lens.toml"),
}
"""The bundled HST-like example: role -> (file in ``blindlens/data``, name :func:`write_example_survey` gives it)."""

EXAMPLE_SURVEY_COMMAND = ("blindlens simulate --lens lens.toml --out hst.fits --layout survey --rotation 25 "
                          "--psf-out psf.fits --cosmic-rays 5 --image-shape 64 64")
"""The command that made the bundled example (the tests re-run it and compare)."""


def example_survey_paths() -> dict[str, Path]:
    """Paths of the bundled HST-like example: ``observation`` (SCI/ERR/DQ with a rotated east-left
    TAN WCS, 64 x 64 at 0.05"/pixel, 5 cosmic rays flagged in DQ), ``psf`` (its PSF file),
    ``truth`` (the truth file ``--truth`` reads) and ``lens`` (the lens TOML with the deflector
    light). Made by :data:`EXAMPLE_SURVEY_COMMAND`; docs/real_data.md."""
    data = resources.files("blindlens") / "data"
    return {role: Path(str(data / name)) for role, (name, _) in EXAMPLE_SURVEY_FILES.items()}


def write_example_survey(out_dir) -> dict[str, Path]:
    """Copy the bundled HST-like example into ``out_dir`` (created if needed) as ``hst.fits``,
    ``psf.fits``, ``hst_truth.npz`` and ``lens.toml``; returns the written paths by role.

    Existing files are never replaced: a ``FileExistsError`` names the first one.
    """
    import shutil

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is a file; give a folder for the example.")
    sources = example_survey_paths()
    targets = {role: out_dir / name for role, (_, name) in EXAMPLE_SURVEY_FILES.items()}
    for role, path in targets.items():
        if not sources[role].is_file():
            raise FileNotFoundError(f"the bundled example file {sources[role]} is missing; reinstall blindlens.")
        if path.exists():
            raise FileExistsError(f"{path} exists; give another --out folder or remove it.")
    out_dir.mkdir(parents=True, exist_ok=True)
    for role, path in targets.items():
        shutil.copyfile(sources[role], path)
    return targets


def simulate_observation(
    lens,
    source: SourceImage,
    source_pixel_scale: float,
    *,
    key: PRNGKeyArray,
    image_shape: tuple[int, int] = (96, 96),
    pixel_scale: float = 0.05,
    psf_fwhm: float = 0.1,
    noise_sigma: float = 0.01,
    supersampling: int = 1,
    source_center: tuple[float, float] = (0.0, 0.0),
    pix2angle=None,
) -> tuple[Observation, Image]:
    """Simulate an observation of ``source`` through ``lens``.

    Parameters
    ----------
    lens
        Lens Module (:mod:`blindlens.lens_models`); a
        :class:`~blindlens.light_profiles.LensWithLight` adds its deflector light to the image.
    source
        ``(sy, sx)`` surface-brightness array, finite.
    source_pixel_scale
        Source pixel scale in arcsec/pixel.
    key
        PRNG key for the noise.
    image_shape, pixel_scale
        Image grid ``(ny, nx)`` and its pixel scale in arcsec/pixel (centred on (0, 0)).
    psf_fwhm
        FWHM of the Gaussian PSF in arcsec (:func:`blindlens.psf.gaussian_psf`).
    noise_sigma
        Per-pixel Gaussian noise standard deviation, same units as the image (> 0).
    supersampling
        Rays per pixel along each axis for the simulation.
    source_center
        ``(x, y)`` of the source grid centre in arcsec.
    pix2angle
        Optional ``(2, 2)`` pixel -> sky-frame matrix [arcsec/pixel] (a WCS CD matrix times 3600,
        :class:`~blindlens.grid.PixelGrid`): the image is then simulated in the sky frame, with
        ``pixel_scale`` ignored for the grid (it is ``sqrt|det pix2angle|``).

    Returns
    -------
    (Observation, noiseless image)
    """
    src = np.asarray(source, dtype=np.float64)
    _check_source_array(src)
    if not (np.isfinite(source_pixel_scale) and source_pixel_scale > 0):
        raise ValueError(f"source_pixel_scale must be positive (arcsec/pixel), got {source_pixel_scale}.")
    if not (np.isfinite(noise_sigma) and noise_sigma > 0):
        raise ValueError(f"noise_sigma must be positive, got {noise_sigma}.")
    if pix2angle is not None:
        pix2angle = tuple(tuple(float(v) for v in row) for row in np.asarray(pix2angle, float))
        pixel_scale = float(np.sqrt(abs(np.linalg.det(np.asarray(pix2angle)))))
    image_grid = PixelGrid(tuple(int(n) for n in image_shape), float(pixel_scale), pix2angle=pix2angle)
    source_grid = PixelGrid(src.shape, float(source_pixel_scale), tuple(float(c) for c in source_center))
    kernel = gaussian_psf(psf_fwhm, pixel_scale)
    op = LensingOperator(lens, image_grid, source_grid, psf=kernel, supersampling=supersampling)
    dtype = jnp.asarray(0.0).dtype
    noiseless = op(jnp.asarray(src, dtype))
    from ..physics.light_profiles import LensLightImager, light_of

    if light_of(lens) is not None:  # the deflector's own light, PSF-convolved
        noiseless = noiseless + LensLightImager(image_grid, op.psf, supersampling)(light_of(lens))
    noisy = noiseless + noise_sigma * jax.random.normal(key, noiseless.shape, dtype)
    obs = Observation(np.asarray(noisy), noise_sigma, kernel, pixel_scale, pix2angle=pix2angle)
    return obs, noiseless


def load_source(path: str | os.PathLike) -> np.ndarray:
    """Read a source array from ``.npy`` or FITS (primary HDU); checks it is 2-D and finite."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"source file {path} does not exist.")
    name = path.name.lower()
    if name.endswith(".npy"):
        src = np.load(path, allow_pickle=False)
    elif name.endswith((".fits", ".fit", ".fts", ".fits.gz")):
        src = read_fits_array(path, ndim=2)
    else:
        raise ValueError(f"unknown source file type for {path}: use .npy or .fits.")
    src = np.asarray(src, dtype=np.float64)
    _check_source_array(src, str(path))
    return src


def _check_source_array(src, where="source"):
    if src.ndim != 2:
        raise ValueError(f"{where} must be a 2-D array (sy, sx), got shape {src.shape}.")
    if not np.all(np.isfinite(src)):
        raise ValueError(f"{where} contains NaN/inf values; replace them (e.g. with 0) first.")


def truth_path_for(out: str | os.PathLike) -> Path:
    """``obs.fits`` -> ``obs_truth.npz`` (same folder)."""
    out = Path(out)
    stem = out.name
    for suffix in (".fits.gz", ".fits", ".fit", ".fts", ".npz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return out.with_name(f"{stem}_truth.npz")


def save_truth(
    path: str | os.PathLike,
    lens,
    source,
    source_pixel_scale: float,
    noiseless_image,
    image_pixel_scale: float,
    *,
    source_center=(0.0, 0.0),
    supersampling: int = 1,
    noise_sigma: float = float("nan"),
    psf_fwhm: float = float("nan"),
    seed: int = -1,
) -> Path:
    """Write a truth file (keys in the module docstring); returns the path."""
    path = Path(path)
    np.savez(
        path,
        lens_toml=np.asarray(dumps_lens_config(lens)),
        source=np.asarray(source, np.float64),
        source_pixel_scale=np.float64(source_pixel_scale),
        source_center=np.asarray(source_center, np.float64),
        noiseless_image=np.asarray(noiseless_image, np.float64),
        image_pixel_scale=np.float64(image_pixel_scale),
        supersampling=np.int64(supersampling),
        noise_sigma=np.float64(noise_sigma),
        psf_fwhm=np.float64(psf_fwhm),
        seed=np.int64(seed),
    )
    return path


def load_truth(path: str | os.PathLike) -> dict:
    """Read a truth file; ``result["lens"]`` is the lens Module, the rest are NumPy values."""
    import tomllib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"truth file {path} does not exist.")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("lens_toml", "source", "source_pixel_scale") if k not in f.files]
        if missing:
            raise ValueError(f"{path} is not a blindlens truth file (missing {missing}).")
        out = {k: f[k] for k in f.files}
    out["lens_toml"] = str(out["lens_toml"])
    out["lens"] = lens_from_config(tomllib.loads(out["lens_toml"]))
    return out


def plot_observation(
    obs: Observation,
    path: str | os.PathLike,
    *,
    lens=None,
    source=None,
    source_pixel_scale: float | None = None,
    source_center=(0.0, 0.0),
    noiseless=None,
) -> Path:
    """Save a figure of the observation: data (with critical curves if ``lens`` is given),
    optionally the noiseless image, and the source (with caustics). matplotlib is imported here only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..physics.lens_models import critical_curves_and_caustics

    panels = 1 + (noiseless is not None) + (source is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.0), squeeze=False)
    axes = list(axes[0])
    grid = obs.image_grid
    critical, caustics = ([], [])
    if lens is not None:
        critical, caustics = critical_curves_and_caustics(lens, grid, supersampling=4)

    def _show(ax, data, g, title):  # imshow, or pcolormesh for a rotated sky-frame grid
        im = g.show(ax, np.asarray(data), cmap="magma")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title)
        ax.set_xlabel("x [arcsec]")
        ax.set_ylabel("y [arcsec]")

    ax = axes.pop(0)
    _show(ax, obs.image, grid, "observed image")
    for line in critical:
        ax.plot(line[:, 0], line[:, 1], color="cyan", lw=0.8)
    if noiseless is not None:
        ax = axes.pop(0)
        _show(ax, noiseless, grid, "noiseless model")
        for line in critical:
            ax.plot(line[:, 0], line[:, 1], color="cyan", lw=0.8, label="critical curve")
    if source is not None:
        if source_pixel_scale is None:
            raise ValueError("plot_observation needs source_pixel_scale to place the source.")
        src = np.asarray(source)
        sgrid = PixelGrid(src.shape, float(source_pixel_scale), (float(source_center[0]), float(source_center[1])))
        ax = axes.pop(0)
        _show(ax, src, sgrid, "source")
        for line in caustics:
            ax.plot(line[:, 0], line[:, 1], color="lime", lw=0.8)
        x0, x1, y0, y1 = sgrid.extent
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def survey_pix2angle(rotation: float, pixel_scale: float) -> np.ndarray:
    """The ``pix2angle`` matrix (arcsec per pixel) of a survey frame: east left (the RA axis flipped,
    as on the sky) and the pixel axes rotated by ``rotation`` degrees counter-clockwise."""
    a = np.deg2rad(rotation)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return rot @ np.diag([-pixel_scale, pixel_scale])


def save_simulated_survey(path, obs, *, pix2angle, noise_sigma: float, sky_center=(150.1, 2.2), cosmic_rays: int = 0,
                          seed: int = 0, psf_out=None):
    """Write a simulated observation in the survey layout (``SCI``/``ERR``/``DQ``, celestial WCS; the PSF
    as an extension or, with ``psf_out``, its own FITS file) with ``cosmic_rays`` short streaks far above
    the noise, flagged in ``DQ`` with HST's cosmic-ray bit (8192). Returns the path written."""
    from .survey_fits import save_psf_fits, save_survey_fits

    image = np.array(obs.image, np.float32)
    dq = np.zeros(image.shape, np.int16)
    rng = np.random.default_rng(seed)
    for _ in range(int(cosmic_rays)):  # a short streak of a few pixels
        j, i = rng.integers(0, image.shape[0]), rng.integers(0, image.shape[1])
        for step in range(int(rng.integers(1, 4))):
            jj = min(j + step, image.shape[0] - 1)
            image[jj, i] += 50 * noise_sigma * (1 + rng.random())
            dq[jj, i] = 8192
    err = np.full(image.shape, noise_sigma, np.float32)
    if psf_out:
        save_psf_fits(psf_out, np.asarray(obs.psf), obs.pixel_scale)
    return save_survey_fits(path, image, pix2angle=pix2angle, sky_center=tuple(sky_center), err=err, dq=dq,
                            psf=None if psf_out else np.asarray(obs.psf))

