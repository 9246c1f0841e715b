"""ArviZ InferenceData for blindlens posteriors: coordinates, data, model images, residuals.

:func:`to_inference_data` turns a finished ``numpyro.infer.MCMC`` run of
:class:`blindlens.gibbs_kernel.BlindLensGibbs` into ArviZ's container with

* ``posterior``: the lens parameters (``theta_E, e1, ...``; float64, so that ArviZ's density
  and histogram defaults work on draws with a tiny spread) and ``source`` with dims
  ``(source_y, source_x)`` and arcsec coordinates of the source-pixel centres;
* ``sample_stats``: ArviZ's names (``lp``, ``energy``, ``diverging``, ``acceptance_rate``,
  ``step_size``, ``n_steps``, ``tree_depth``) plus ``num_score_evals``;
* ``observed_data``: ``image`` with dims ``(image_y, image_x)`` and arcsec coordinates;
* ``constant_data``: ``psf``, ``noise`` (per-pixel standard deviation) and ``mask``;
* ``posterior_predictive``: ``model_image`` (noise-free ``A_theta s`` per draw), ``image``
  (a noisy replicate) and ``normalized_residual`` ``(y - A_theta s) / sigma`` (NaN on masked
  pixels);
* ``log_likelihood``: ``image``, the pointwise Gaussian log-likelihood
  ``log N(y_i; (A_theta s)_i, sigma_i^2)`` of every unmasked pixel, dims ``(chain, draw, pixel)``
  (``pixel_row``/``pixel_col`` and ``pixel_y``/``pixel_x`` locate each pixel), so that
  ``arviz.loo`` and ``arviz.waic`` see one observation per pixel.

The predictive and log-likelihood groups are recomputed from the stored draws in chunks, so
memory stays bounded by ``chunk_size`` images during the computation.

The container is ``arviz.InferenceData`` with ArviZ < 1 and ``xarray.DataTree`` with ArviZ >= 1
(:func:`make_inference_data`); both are built from the same xarray Datasets and read the same
way (``idata.posterior``, ``"log_likelihood" in idata``, ``idata.to_netcdf(path)``,
``arviz.from_netcdf(path)``).

ArviZ and xarray are imported only in this module (and lazily by the CLI).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import arviz as az
import jax
import numpy as np
import xarray as xr

from .._types import Array, Float
from ..inference.numpyro_model import (
    IMAGE_SITE,
    SOURCE_SITE,
    JointModel,
    lens_from_values,
    lens_site_names,
    nuisance_site_names,
)
from ..physics.grid import PixelGrid
from .posterior_figures import (  # re-exported: the container readers and the corner plot live with the figures
    lens_parameter_names,
    nuisance_parameter_names,
    plot_lens_pair,
    source_draws,
    stored_truth,
)

__all__ = [
    "to_inference_data",
    "make_inference_data",
    "posterior_model_images",
    "grid_coords",
    "grid_attrs",
    "fixed_lens_inference_data",
    "lens_parameter_names",
    "nuisance_parameter_names",
    "stored_truth",
    "residual_chi2",
    "summary_text",
    "plot_joint_summary",
    "plot_lens_pair",
]

LOG_LIKELIHOOD_DIM = "pixel"
"""Observation dimension of the ``log_likelihood`` group (the unmasked pixels, row-major)."""


def grid_coords(grid: PixelGrid, prefix: str) -> dict[str, np.ndarray]:
    """``{prefix_y: y centres, prefix_x: x centres}`` in arcsec, for xarray coordinates.

    A rotated sky-frame grid (``pix2angle`` with off-diagonal terms) has no 1-D x/y axes: its
    coordinates are then the offsets from the grid centre along the pixel axes (row, column) in
    arcsec, and :func:`grid_attrs` stores the pixel -> sky map.
    """
    if not grid.is_axis_aligned:
        return {
            f"{prefix}_y": (np.arange(grid.ny) - (grid.ny - 1) / 2) * float(grid.pixel_scale),
            f"{prefix}_x": (np.arange(grid.nx) - (grid.nx - 1) / 2) * float(grid.pixel_scale),
        }
    return {
        f"{prefix}_y": np.asarray(grid.y_coords, dtype=float),
        f"{prefix}_x": np.asarray(grid.x_coords, dtype=float),
    }


def grid_attrs(grid: PixelGrid, prefix: str) -> dict[str, str]:
    """``{prefix_pix2angle, prefix_center}`` (JSON) for a sky-frame grid; ``{}`` for a plain one."""
    if grid.pix2angle is None:
        return {}
    return {f"{prefix}_pix2angle": json.dumps(grid.pix2angle), f"{prefix}_center": json.dumps(list(grid.center))}


def make_inference_data(groups: Mapping[str, xr.Dataset | None]):
    """ArviZ's container of named groups, for the installed ArviZ.

    Parameters
    ----------
    groups
        Group name (``"posterior"``, ``"sample_stats"``, ...) -> ``xarray.Dataset``; ``None``
        values are dropped.

    Returns
    -------
    ``arviz.InferenceData`` with ArviZ < 1, ``xarray.DataTree`` with ArviZ >= 1 (what that
    version's ``arviz.from_dict`` and ``arviz.from_netcdf`` return). Both give
    ``idata.posterior``, ``idata["posterior"]``, ``"posterior" in idata`` and
    ``idata.to_netcdf(path)``.
    """
    groups = {name: ds for name, ds in groups.items() if ds is not None}
    if int(str(az.__version__).split(".")[0]) < 1:
        return az.InferenceData(**groups)
    return xr.DataTree.from_dict(groups)


def _chain_draw_coords(n_chain: int, n_draw: int) -> dict[str, np.ndarray]:
    return {"chain": np.arange(n_chain), "draw": np.arange(n_draw)}


def _predict_in_chunks(
    model: JointModel,
    lens_samples: Mapping[str, np.ndarray],
    sources: np.ndarray,
    chunk_size: int,
    log_likelihood: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model images ``(n, ny, nx)`` and, optionally, the pointwise log-likelihood ``(n, n_unmasked)``.

    Both come from one compiled batch of ``chunk_size`` draws: ``A_theta s`` through the model's
    unmasked operator and :meth:`JointModel.pixel_log_likelihood` of that image.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    names = lens_site_names(model.lens_model)
    n = sources.shape[0]
    mask = np.asarray(model.mask, bool)

    @jax.jit
    def batch(values, src):
        def one(v, s):
            image = model.predict(lens_from_values(model.lens_model, v), s)
            return image, model.pixel_log_likelihood(image)

        return jax.vmap(one)(values, src)

    images = np.empty((n, *model.image.shape), np.float32)
    pointwise = np.empty((n, int(mask.sum())), np.float32) if log_likelihood else None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        pad = chunk_size - (stop - start)
        values = {k: np.asarray(lens_samples[k][start:stop]) for k in names}
        src = np.asarray(sources[start:stop])
        if pad:  # keep one compiled shape
            values = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in values.items()}
            src = np.concatenate([src, np.repeat(src[-1:], pad, axis=0)])
        image, ll = jax.device_get(batch(values, src))
        images[start:stop] = image[: stop - start]
        if pointwise is not None:
            pointwise[start:stop] = ll[: stop - start][:, mask]
    return images, pointwise


def posterior_model_images(
    model: JointModel,
    lens_samples: Mapping[str, np.ndarray],
    sources: Float[Array, "n sy sx"] | np.ndarray,
    *,
    chunk_size: int = 64,
) -> np.ndarray:
    """Noise-free model images ``A_theta s`` for flat arrays of draws, computed in chunks.

    Parameters
    ----------
    model
        The joint model (its lens model and unmasked operator are used).
    lens_samples
        Site name -> array ``(n, ...)`` of constrained lens parameters.
    sources
        ``(n, sy, sx)`` source draws.
    chunk_size
        Draws per compiled batch; peak extra memory is about ``chunk_size`` images.

    Returns
    -------
    ``(n, ny, nx)`` float32 array.
    """
    return _predict_in_chunks(model, lens_samples, np.asarray(sources), chunk_size, log_likelihood=False)[0]


def _psf_kernel(observation) -> np.ndarray | None:
    psf = getattr(observation, "psf", None)
    if psf is None:
        return None
    kernel = getattr(psf, "kernel", psf)
    return np.asarray(kernel, dtype=float)


_STAT_NAMES = {
    "potential_energy": "lp",
    "adapt_state.step_size": "step_size",
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
}


def _stats_to_arviz(stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NumPyro field names -> ArviZ sample-stat names (the renaming of ``az.from_numpyro``)."""
    out = {}
    for name, value in stats.items():
        if isinstance(value, (dict, tuple)):  # structured fields (e.g. a whole state) are not stats
            continue
        value = np.asarray(value)
        if name == "potential_energy":
            out["lp"] = -value
        else:
            out[_STAT_NAMES.get(name, name)] = value
        if name == "num_steps":
            out["tree_depth"] = (np.log2(np.maximum(value, 1)).astype(int) + 1)
    return out


def _posterior_dataset(draws: Mapping[str, np.ndarray], lens_names, coords) -> xr.Dataset:
    """Posterior group: lens sites as float64, ``source`` on ``(source_y, source_x)``."""
    data = {}
    for name, value in draws.items():
        value = np.asarray(value)
        if name == SOURCE_SITE:
            dims = ("chain", "draw", "source_y", "source_x")
        else:
            dims = ("chain", "draw", *(f"{name}_dim_{i}" for i in range(value.ndim - 2)))
        if name in lens_names:
            # float32 draws with a spread of a few ulps give ArviZ's KDE/histogram grids bins of
            # zero width ("Too many bins for data range"); float64 keeps its defaults working
            value = value.astype(np.float64)
        data[name] = (dims, value)
    n_chain, n_draw = np.asarray(draws[SOURCE_SITE]).shape[:2]
    return xr.Dataset(
        data,
        coords={**_chain_draw_coords(n_chain, n_draw), **{k: coords[k] for k in ("source_y", "source_x")}},
    )


def _image_coords(coords) -> dict[str, np.ndarray]:
    return {k: coords[k] for k in ("image_y", "image_x")}


def _constant_dataset(noise: np.ndarray, mask: np.ndarray, psf: np.ndarray | None, coords) -> xr.Dataset:
    constant = {
        "noise": (("image_y", "image_x"), np.where(mask, noise, np.inf)),
        "mask": (("image_y", "image_x"), mask),
    }
    if psf is not None:
        constant["psf"] = (("psf_y", "psf_x"), psf)
    return xr.Dataset(constant, coords=_image_coords(coords))


def _log_likelihood_dataset(pointwise: np.ndarray, mask: np.ndarray, n_chain: int, n_draw: int, coords):
    """``log_likelihood.image`` ``(chain, draw, pixel)`` over the unmasked pixels (row-major)."""
    rows, cols = np.nonzero(mask)
    return xr.Dataset(
        {IMAGE_SITE: (("chain", "draw", LOG_LIKELIHOOD_DIM), pointwise.reshape(n_chain, n_draw, rows.size))},
        coords={
            **_chain_draw_coords(n_chain, n_draw),
            LOG_LIKELIHOOD_DIM: np.arange(rows.size),
            "pixel_row": (LOG_LIKELIHOOD_DIM, rows),
            "pixel_col": (LOG_LIKELIHOOD_DIM, cols),
            "pixel_y": (LOG_LIKELIHOOD_DIM, coords["image_y"][rows]),
            "pixel_x": (LOG_LIKELIHOOD_DIM, coords["image_x"][cols]),
        },
    )


def to_inference_data(
    mcmc,
    observation,
    *,
    kernel=None,
    sample_stats: Mapping[str, np.ndarray] | None = None,
    truth: Mapping[str, float] | None = None,
    chunk_size: int = 64,
    predictive: bool = True,
    seed: int = 0,
    log_likelihood: bool = True,
):
    """InferenceData of a :class:`~blindlens.gibbs_kernel.BlindLensGibbs` run (see module docs).

    Parameters
    ----------
    mcmc
        A ``numpyro.infer.MCMC`` whose kernel is a ``BlindLensGibbs``, after ``run``; or a
        dict of posterior draws grouped by chain (site -> ``(chain, draw, ...)``, as
        ``mcmc.get_samples(group_by_chain=True)``), e.g. concatenated from chunked runs, in
        which case ``kernel`` is required.
    observation
        The observation the run was conditioned on (for the PSF and the data coordinates).
    kernel
        The ``BlindLensGibbs`` kernel (only with a dict of draws).
    sample_stats
        NumPyro extra fields grouped by chain (only with a dict of draws); renamed to ArviZ's
        vocabulary like ``az.from_numpyro`` does.
    truth
        Optional true lens parameters (simulations); stored as JSON in
        ``posterior.attrs["truth"]`` and used by the pair plot.
    chunk_size
        Draws per batch when recomputing model images and log-likelihoods.
    predictive
        Add the ``posterior_predictive`` group (model images, noisy replicates, normalised
        residuals).
    seed
        Seed of the noise in the replicated ``image``.
    log_likelihood
        Add the ``log_likelihood`` group: the pointwise log-likelihood of every unmasked pixel
        and draw, ``(chain, draw, pixel)`` (what ``arviz.loo``/``arviz.waic`` need; its size is
        at most that of one ``posterior_predictive`` image variable).

    Returns
    -------
    ``arviz.InferenceData`` (ArviZ < 1) or ``xarray.DataTree`` (ArviZ >= 1), see
    :func:`make_inference_data`; save it with ``idata.to_netcdf(path)``.
    """
    from_dict = isinstance(mcmc, Mapping)
    kernel = kernel if from_dict else mcmc.sampler
    model = getattr(kernel, "joint_model", None)
    if not isinstance(model, JointModel):
        raise ValueError(
            "to_inference_data needs a blindlens.BlindLensGibbs run (an MCMC whose sampler is one, or "
            "draws plus kernel=BlindLensGibbs); for other NumPyro kernels use arviz.from_numpyro."
        )
    source_grid = kernel.source_grid
    image_grid = getattr(observation, "image_grid", None)
    if image_grid is None:
        ny, nx = model.image.shape
        image_grid = PixelGrid((ny, nx), 1.0)
    coords = {**grid_coords(source_grid, "source"), **grid_coords(image_grid, "image")}
    if from_dict:
        draws = {k: np.asarray(v) for k, v in mcmc.items()}
        if SOURCE_SITE not in draws:
            raise ValueError(f"the draws have no {SOURCE_SITE!r} site; pass mcmc.get_samples(group_by_chain=True).")
        stats = sample_stats or {}
    else:
        draws = {k: np.asarray(v) for k, v in jax.device_get(mcmc.get_samples(group_by_chain=True)).items()}
        stats = jax.device_get(mcmc.get_extra_fields(group_by_chain=True))
    names = lens_site_names(model.lens_model)
    n_chain, n_draw = draws[SOURCE_SITE].shape[:2]
    stats = _stats_to_arviz(stats)

    noise = np.asarray(model.noise, float)
    mask = np.asarray(model.mask, bool)
    groups = {
        "posterior": _posterior_dataset(draws, names, coords),
        "sample_stats": xr.Dataset(
            {k: (("chain", "draw", *(f"{k}_dim_{i}" for i in range(v.ndim - 2))), v) for k, v in stats.items()},
            coords=_chain_draw_coords(n_chain, n_draw),
        ) if stats else None,
        "log_likelihood": None,
        "posterior_predictive": None,
        "observed_data": xr.Dataset(
            {IMAGE_SITE: (("image_y", "image_x"), np.asarray(model.image))}, coords=_image_coords(coords)
        ),
        "constant_data": _constant_dataset(noise, mask, _psf_kernel(observation), coords),
    }

    if predictive or log_likelihood:
        flat = {k: draws[k].reshape(n_chain * n_draw, *draws[k].shape[2:]) for k in names}
        sources = draws[SOURCE_SITE].reshape(n_chain * n_draw, *source_grid.shape)
        images, pointwise = _predict_in_chunks(model, flat, sources, chunk_size, log_likelihood)
        if log_likelihood:
            groups["log_likelihood"] = _log_likelihood_dataset(pointwise, mask, n_chain, n_draw, coords)
    if predictive:
        shape = (n_chain, n_draw, *model.image.shape)
        images = images.reshape(shape)
        y = np.asarray(model.image, np.float32)
        resid = np.where(mask, (y - images) / noise.astype(np.float32), np.nan).astype(np.float32)
        rng = np.random.default_rng(seed)
        replicate = (images + noise.astype(np.float32) * rng.standard_normal(shape, np.float32)).astype(np.float32)
        image_dims = ("chain", "draw", "image_y", "image_x")
        groups["posterior_predictive"] = xr.Dataset(
            {
                "model_image": (image_dims, images),
                IMAGE_SITE: (image_dims, replicate),
                "normalized_residual": (image_dims, resid),
            },
            coords={**_chain_draw_coords(n_chain, n_draw), **_image_coords(coords)},
        )

    attrs = {
        "inference_library": "numpyro",
        "blindlens_lens_sites": json.dumps(list(names)),
        "blindlens_nuisance_sites": json.dumps([n for n in nuisance_site_names(model.lens_model) if n in names]),
        "source_pixel_scale": float(source_grid.pixel_scale),
        "image_pixel_scale": float(image_grid.pixel_scale),
        **grid_attrs(image_grid, "image"),
    }
    if truth is not None:
        attrs["truth"] = json.dumps({k: float(v) for k, v in truth.items()})
    groups["posterior"].attrs.update(attrs)
    return make_inference_data(groups)


def fixed_lens_inference_data(
    samples: Float[Array, "n sy sx"] | np.ndarray,
    model_images: Float[Array, "n ny nx"] | np.ndarray,
    observation,
    source_grid: PixelGrid,
    *,
    attrs: Mapping[str, object] | None = None,
):
    """InferenceData of source samples drawn for a fixed lens (``blindlens sample --fixed-lens``).

    Parameters
    ----------
    samples
        ``(n, sy, sx)`` source draws (one chain of ``n`` draws).
    model_images
        ``(n, ny, nx)`` noise-free model images ``A s`` of the draws.
    observation
        The :class:`~blindlens.observation.Observation` (image, noise, PSF, mask, grid).
    source_grid
        The source-plane grid the draws live on (arcsec coordinates).
    attrs
        Extra ``posterior.attrs`` (JSON-serialisable values, e.g. the sampler settings).

    Returns
    -------
    ``arviz.InferenceData`` (ArviZ < 1) or ``xarray.DataTree`` (ArviZ >= 1) with
    ``posterior.source`` ``(chain, draw, source_y, source_x)``, ``observed_data.image``,
    ``constant_data`` (``noise``, ``mask``, ``psf``) and ``posterior_predictive``
    (``model_image``, ``normalized_residual`` = (y - A s) / sigma, NaN on masked pixels).
    """
    samples = np.asarray(samples, np.float32)
    model_images = np.asarray(model_images, np.float32)
    image_grid = observation.image_grid
    coords = {**grid_coords(source_grid, "source"), **grid_coords(image_grid, "image")}
    y = np.asarray(observation.image, np.float32)
    noise = np.broadcast_to(np.asarray(observation.noise, np.float32), y.shape)
    mask = np.ones(y.shape, bool) if observation.mask is None else np.asarray(observation.mask) > 0
    resid = np.where(mask, (y - model_images) / noise, np.nan).astype(np.float32)
    n = samples.shape[0]
    image_dims = ("chain", "draw", "image_y", "image_x")
    extra = {
        "source_pixel_scale": float(source_grid.pixel_scale),
        "image_pixel_scale": float(image_grid.pixel_scale),
        **grid_attrs(image_grid, "image"),
        "fixed_lens": 1,
    }
    for key, value in (attrs or {}).items():
        extra[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
    posterior = _posterior_dataset({SOURCE_SITE: samples[None]}, (), coords)
    posterior.attrs.update(extra)
    return make_inference_data(
        {
            "posterior": posterior,
            "posterior_predictive": xr.Dataset(
                {"model_image": (image_dims, model_images[None]), "normalized_residual": (image_dims, resid[None])},
                coords={**_chain_draw_coords(1, n), **_image_coords(coords)},
            ),
            "observed_data": xr.Dataset({IMAGE_SITE: (("image_y", "image_x"), y)}, coords=_image_coords(coords)),
            "constant_data": _constant_dataset(noise, mask, _psf_kernel(observation), coords),
        }
    )


# --- summaries and figures --------------------------------------------------------------------


def residual_chi2(idata) -> np.ndarray:
    """Per-draw residual ``chi^2 / N`` over unmasked pixels, shape ``(chain, draw)``."""
    r = idata.posterior_predictive["normalized_residual"].values
    n = np.sum(np.isfinite(r[0, 0]))
    return np.nansum(r**2, axis=(-2, -1)) / max(int(n), 1)


def summary_text(idata, truth: Mapping[str, float] | None = None, *, title: str = "blindlens posterior") -> str:
    """A one-page plain-text summary: lens posterior means, 68% intervals, truth, R-hat, ESS, chi^2/N.

    The 68% interval is the central (16%, 84%) quantile interval over all chains and draws;
    ``z = (mean - truth) / sd``. R-hat is the rank-normalised split R-hat and ESS the bulk and tail
    effective sample sizes of Vehtari et al. 2021 (Bayesian Analysis 16, 667), via ArviZ.
    """
    names = lens_parameter_names(idata)
    truth = dict(truth) if truth is not None else (stored_truth(idata) or {})
    summ = az.summary(idata, var_names=names, kind="diagnostics")
    lines = [title, "=" * len(title), ""]
    post = idata.posterior
    lines.append(
        f"chains {post.sizes['chain']}, draws per chain {post.sizes['draw']}; lens model parameters: {', '.join(names)}"
    )
    lines.append("")
    header = f"{'parameter':>10} {'mean':>9} {'16%':>9} {'84%':>9} {'truth':>9} {'z':>6} {'in68':>5} {'R-hat':>6} {'ESS_b':>7} {'ESS_t':>7}"
    lines += [header, "-" * len(header)]
    n_in = 0
    for n in names:
        v = post[n].values.reshape(-1)
        mean, sd = float(v.mean()), float(v.std())
        lo, hi = np.quantile(v, [0.16, 0.84])
        row = summ.loc[n]
        if n in truth:
            t = truth[n]
            z = (mean - t) / sd if sd > 0 else float("nan")
            inside = lo <= t <= hi
            n_in += int(inside)
            tcol = f"{t:9.4f} {z:6.2f} {('yes' if inside else 'no'):>5}"
        else:
            tcol = f"{'-':>9} {'-':>6} {'-':>5}"
        lines.append(
            f"{n:>10} {mean:9.4f} {lo:9.4f} {hi:9.4f} {tcol} {row['r_hat']:6.3f} {row['ess_bulk']:7.0f} {row['ess_tail']:7.0f}"
        )
    lines.append("")
    if truth:
        covered = [n for n in names if n in truth]
        lines.append(f"truth inside the 68% interval for {n_in} of {len(covered)} parameters (expected ~68%).")
    if "posterior_predictive" in idata and "normalized_residual" in idata.posterior_predictive:
        chi2 = residual_chi2(idata)
        n = int(np.sum(np.isfinite(idata.posterior_predictive["normalized_residual"].values[0, 0])))
        lines.append(
            f"residual chi^2/N per draw (N = {n} pixels): mean {chi2.mean():.3f}, 16-84% "
            f"[{np.quantile(chi2, 0.16):.3f}, {np.quantile(chi2, 0.84):.3f}] (expected 1 +- {np.sqrt(2 / n):.3f})"
        )
    if "sample_stats" in idata and "diverging" in idata.sample_stats:
        lines.append(f"divergent lens transitions: {int(idata.sample_stats['diverging'].values.sum())}")
    nuisance = set(nuisance_parameter_names(idata))
    judged = summ.loc[[n for n in names if n not in nuisance] or names]
    worst = float(judged["r_hat"].max())
    lines.append(
        f"max R-hat {worst:.3f} ({'ok' if worst < 1.01 else 'chains not yet mixed: run longer' if worst > 1.1 else 'borderline'}),"
        f" min bulk ESS {float(judged['ess_bulk'].min()):.0f}"
        + (f" over the lens parameters ({', '.join(sorted(nuisance))}: nuisance, not judged)" if nuisance else "")
    )
    return "\n".join(lines) + "\n"


def plot_joint_summary(idata, path, observation=None):
    """Figure: data, posterior-mean model, mean normalised residual, source mean and std, chi^2/N.

    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = idata.observed_data[IMAGE_SITE].values
    model_mean = idata.posterior_predictive["model_image"].mean(("chain", "draw")).values
    resid = idata.posterior_predictive["normalized_residual"].mean(("chain", "draw")).values
    src = source_draws(idata)  # in the source plane's frame (a sampled grid placement undone)
    src_mean, src_std = src.mean(axis=0), src.std(axis=0)

    def extent(prefix, ds):
        x, y = ds[f"{prefix}_x"].values, ds[f"{prefix}_y"].values
        dx = (x[1] - x[0]) if x.size > 1 else 1.0
        dy = (y[1] - y[0]) if y.size > 1 else 1.0
        return (x[0] - dx / 2, x[-1] + dx / 2, y[0] - dy / 2, y[-1] + dy / 2)

    ext_i = extent("image", idata.observed_data)
    ext_s = extent("source", idata.posterior)
    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    vmax = float(np.nanmax(obs))
    panels = [
        (axes[0, 0], obs, ext_i, "data", dict(vmin=0 if np.nanmin(obs) >= 0 else None, vmax=vmax)),
        (axes[0, 1], model_mean, ext_i, "posterior-mean model", dict(vmax=vmax)),
        (axes[0, 2], resid, ext_i, "mean normalised residual", dict(cmap="RdBu_r", vmin=-3, vmax=3)),
        (axes[1, 0], src_mean, ext_s, "source mean", {}),
        (axes[1, 1], src_std, ext_s, "source std", dict(cmap="magma")),
    ]
    for ax, img, ext, title, kw in panels:
        im = ax.imshow(img, origin="lower", extent=ext, **{"cmap": "viridis", **kw})
        ax.set_title(title)
        ax.set_xlabel("x [arcsec]")
        ax.set_ylabel("y [arcsec]")
        fig.colorbar(im, ax=ax, fraction=0.046)
    chi2 = residual_chi2(idata).reshape(-1)
    ax = axes[1, 2]
    ax.hist(chi2, bins=30, color="0.5")
    ax.axvline(1.0, color="k", ls="--")
    ax.set_xlabel("residual chi^2 / N per draw")
    ax.set_title("goodness of fit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
