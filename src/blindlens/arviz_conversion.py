"""ArviZ InferenceData for blindlens posteriors: coordinates, data, model images, residuals.

:func:`to_inference_data` turns a finished ``numpyro.infer.MCMC`` run of
:class:`blindlens.gibbs_kernel.BlindLensGibbs` into an ``arviz.InferenceData`` with

* ``posterior``: the lens parameters (``theta_E, e1, ...``) and ``source`` with dims
  ``(source_y, source_x)`` and arcsec coordinates of the source-pixel centres;
* ``sample_stats``: ArviZ's names (``lp``, ``diverging``, ``acceptance_rate``, ``step_size``,
  ``n_steps``, ``tree_depth``) plus ``num_score_evals``;
* ``observed_data``: ``image`` with dims ``(image_y, image_x)`` and arcsec coordinates;
* ``constant_data``: ``psf``, ``noise`` (per-pixel standard deviation) and ``mask``;
* ``posterior_predictive``: ``model_image`` (noise-free ``A_theta s`` per draw), ``image``
  (a noisy replicate) and ``normalized_residual`` ``(y - A_theta s) / sigma`` (NaN on masked
  pixels), recomputed from the stored draws in chunks so that memory stays bounded by
  ``chunk_size`` images during the computation.

ArviZ and xarray are imported only in this module (and lazily by the CLI).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import arviz as az
import jax
import numpy as np
import xarray as xr

from .grid import PixelGrid
from .numpyro_model import IMAGE_SITE, SOURCE_SITE, JointModel, lens_from_values, lens_site_names

__all__ = [
    "to_inference_data",
    "posterior_model_images",
    "grid_coords",
    "fixed_lens_inference_data",
    "lens_parameter_names",
    "stored_truth",
    "residual_chi2",
    "summary_text",
    "plot_joint_summary",
    "plot_lens_pair",
]


def grid_coords(grid: PixelGrid, prefix: str) -> dict[str, np.ndarray]:
    """``{prefix_y: y centres, prefix_x: x centres}`` in arcsec, for xarray coordinates."""
    return {
        f"{prefix}_y": np.asarray(grid.y_coords, dtype=float),
        f"{prefix}_x": np.asarray(grid.x_coords, dtype=float),
    }


def posterior_model_images(
    model: JointModel,
    lens_samples: Mapping[str, np.ndarray],
    sources: np.ndarray,
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
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    names = lens_site_names(model.lens_model)
    n = sources.shape[0]

    @jax.jit
    def batch(values, src):
        def one(v, s):
            lens = lens_from_values(model.lens_model, v)
            return model.operator(lens, masked=False)(s)

        return jax.vmap(one)(values, src)

    out = np.empty((n, *model.image.shape), np.float32)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        pad = chunk_size - (stop - start)
        values = {k: np.asarray(lens_samples[k][start:stop]) for k in names}
        src = np.asarray(sources[start:stop])
        if pad:  # keep one compiled shape
            values = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in values.items()}
            src = np.concatenate([src, np.repeat(src[-1:], pad, axis=0)])
        out[start:stop] = np.asarray(batch(values, src))[: stop - start]
    return out


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
        value = np.asarray(value)
        if name == "potential_energy":
            out["lp"] = -value
        else:
            out[_STAT_NAMES.get(name, name)] = value
        if name == "num_steps":
            out["tree_depth"] = (np.log2(np.maximum(value, 1)).astype(int) + 1)
    return out


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
    log_likelihood: bool = False,
) -> az.InferenceData:
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
        Draws per batch when recomputing model images.
    predictive
        Add the ``posterior_predictive`` group (model images, noisy replicates, normalised
        residuals).
    seed
        Seed of the noise in the replicated ``image``.
    log_likelihood
        Also compute the ``log_likelihood`` group (``az.from_numpyro``; one value per draw for
        the whole image). Only with an ``MCMC`` object.

    Returns
    -------
    ``arviz.InferenceData``; save it with ``idata.to_netcdf(path)``.
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
    dims = {SOURCE_SITE: ["source_y", "source_x"], IMAGE_SITE: ["image_y", "image_x"]}
    if from_dict:
        posterior = {k: np.asarray(v) for k, v in mcmc.items()}
        if SOURCE_SITE not in posterior:
            raise ValueError(f"the draws have no {SOURCE_SITE!r} site; pass mcmc.get_samples(group_by_chain=True).")
        stats = _stats_to_arviz(sample_stats or {})
        idata = az.from_dict(
            posterior=posterior,
            sample_stats=stats or None,
            observed_data={IMAGE_SITE: np.asarray(model.image)},
            coords=coords,
            dims=dims,
        )
    else:
        idata = az.from_numpyro(mcmc, coords=coords, dims=dims, log_likelihood=log_likelihood)

    noise = np.asarray(model.noise, float)
    mask = np.asarray(model.mask, bool)
    constant = {
        "noise": xr.DataArray(np.where(mask, noise, np.inf), dims=("image_y", "image_x")),
        "mask": xr.DataArray(mask, dims=("image_y", "image_x")),
    }
    kernel_psf = _psf_kernel(observation)
    if kernel_psf is not None:
        constant["psf"] = xr.DataArray(kernel_psf, dims=("psf_y", "psf_x"))
    idata.add_groups(
        constant_data=xr.Dataset(constant, coords={k: coords[k] for k in ("image_y", "image_x")})
    )

    if predictive:
        post = idata.posterior
        n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
        names = lens_site_names(model.lens_model)
        flat = {k: post[k].values.reshape(n_chain * n_draw, *post[k].shape[2:]) for k in names}
        sources = post[SOURCE_SITE].values.reshape(n_chain * n_draw, *source_grid.shape)
        images = posterior_model_images(model, flat, sources, chunk_size=chunk_size)
        shape = (n_chain, n_draw, *model.image.shape)
        images = images.reshape(shape)
        y = np.asarray(model.image, np.float32)
        resid = np.where(mask, (y - images) / noise.astype(np.float32), np.nan).astype(np.float32)
        rng = np.random.default_rng(seed)
        replicate = (images + noise.astype(np.float32) * rng.standard_normal(shape, np.float32)).astype(np.float32)
        image_dims = ("chain", "draw", "image_y", "image_x")
        pp = xr.Dataset(
            {
                "model_image": (image_dims, images),
                IMAGE_SITE: (image_dims, replicate),
                "normalized_residual": (image_dims, resid),
            },
            coords={
                "chain": post["chain"].values,
                "draw": post["draw"].values,
                "image_y": coords["image_y"],
                "image_x": coords["image_x"],
            },
        )
        idata.add_groups(posterior_predictive=pp)

    attrs = {
        "blindlens_lens_sites": json.dumps(list(lens_site_names(model.lens_model))),
        "source_pixel_scale": float(source_grid.pixel_scale),
        "image_pixel_scale": float(image_grid.pixel_scale),
    }
    if truth is not None:
        attrs["truth"] = json.dumps({k: float(v) for k, v in truth.items()})
    idata.posterior.attrs.update(attrs)
    return idata


def fixed_lens_inference_data(
    samples: np.ndarray,
    model_images: np.ndarray,
    observation,
    source_grid: PixelGrid,
    *,
    attrs: Mapping[str, object] | None = None,
) -> az.InferenceData:
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
    ``arviz.InferenceData`` with ``posterior.source`` ``(chain, draw, source_y, source_x)``,
    ``observed_data.image``, ``constant_data`` (``noise``, ``mask``, ``psf``) and
    ``posterior_predictive`` (``model_image``, ``normalized_residual`` = (y - A s) / sigma, NaN on
    masked pixels).
    """
    samples = np.asarray(samples, np.float32)
    model_images = np.asarray(model_images, np.float32)
    image_grid = observation.image_grid
    coords = {**grid_coords(source_grid, "source"), **grid_coords(image_grid, "image")}
    y = np.asarray(observation.image, np.float32)
    noise = np.asarray(observation.noise, np.float32)
    mask = np.ones(y.shape, bool) if observation.mask is None else np.asarray(observation.mask) > 0
    resid = np.where(mask, (y - model_images) / noise, np.nan).astype(np.float32)
    idata = az.from_dict(
        posterior={SOURCE_SITE: samples[None]},
        posterior_predictive={"model_image": model_images[None], "normalized_residual": resid[None]},
        observed_data={IMAGE_SITE: y},
        constant_data={
            "noise": np.where(mask, noise, np.inf),
            "mask": mask,
            **({} if _psf_kernel(observation) is None else {"psf": _psf_kernel(observation)}),
        },
        coords=coords,
        dims={
            SOURCE_SITE: ["source_y", "source_x"],
            "model_image": ["image_y", "image_x"],
            "normalized_residual": ["image_y", "image_x"],
            IMAGE_SITE: ["image_y", "image_x"],
            "noise": ["image_y", "image_x"],
            "mask": ["image_y", "image_x"],
            "psf": ["psf_y", "psf_x"],
        },
    )
    extra = {
        "source_pixel_scale": float(source_grid.pixel_scale),
        "image_pixel_scale": float(image_grid.pixel_scale),
        "fixed_lens": 1,
    }
    for key, value in (attrs or {}).items():
        extra[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
    idata.posterior.attrs.update(extra)
    return idata


# --- summaries and figures --------------------------------------------------------------------


def lens_parameter_names(idata) -> list[str]:
    """Lens-parameter variable names of a blindlens InferenceData (all scalar posterior variables)."""
    stored = idata.posterior.attrs.get("blindlens_lens_sites")
    if stored:
        return list(json.loads(stored))
    return [k for k, v in idata.posterior.data_vars.items() if v.ndim == 2]


def stored_truth(idata) -> dict[str, float] | None:
    """The truth stored by :func:`to_inference_data` (``None`` if there is none)."""
    raw = idata.posterior.attrs.get("truth")
    return None if not raw else {k: float(v) for k, v in json.loads(raw).items()}


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
    if "posterior_predictive" in idata.groups() and "normalized_residual" in idata.posterior_predictive:
        chi2 = residual_chi2(idata)
        n = int(np.sum(np.isfinite(idata.posterior_predictive["normalized_residual"].values[0, 0])))
        lines.append(
            f"residual chi^2/N per draw (N = {n} pixels): mean {chi2.mean():.3f}, 16-84% "
            f"[{np.quantile(chi2, 0.16):.3f}, {np.quantile(chi2, 0.84):.3f}] (expected 1 +- {np.sqrt(2 / n):.3f})"
        )
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        lines.append(f"divergent lens transitions: {int(idata.sample_stats['diverging'].values.sum())}")
    worst = float(summ["r_hat"].max())
    lines.append(
        f"max R-hat {worst:.3f} ({'ok' if worst < 1.01 else 'chains not yet mixed: run longer' if worst > 1.1 else 'borderline'}),"
        f" min bulk ESS {float(summ['ess_bulk'].min()):.0f}"
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
    src = idata.posterior[SOURCE_SITE]
    src_mean, src_std = src.mean(("chain", "draw")).values, src.std(("chain", "draw")).values

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


def plot_lens_pair(idata, path, truth: Mapping[str, float] | None = None):
    """Pair plot of the lens parameters with the truth overlaid (if known). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = lens_parameter_names(idata)
    truth = dict(truth) if truth is not None else (stored_truth(idata) or None)
    ref = {k: v for k, v in truth.items() if k in names} if truth else None
    if len(names) == 1:  # a pair plot needs two variables: show the marginal with the truth
        ax = az.plot_posterior(idata, var_names=names, ref_val=(ref or {}).get(names[0]), hdi_prob=0.68)
        fig = np.ravel(ax)[0].get_figure()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path
    axes = az.plot_pair(
        idata,
        var_names=names,
        kind="scatter",
        marginals=True,
        reference_values=ref or None,
        reference_values_kwargs={"color": "C3", "marker": "x", "markersize": 9},
        scatter_kwargs={"alpha": 0.3, "s": 4},
        figsize=(2.2 * len(names) + 1, 2.2 * len(names) + 1),
    )
    fig = np.ravel(axes)[0].get_figure()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
