"""Observation files to posteriors in vectorised batches: :func:`sample_observations_batch`.

The batch counterpart of :func:`blindlens.pipeline.sample_observation`: the observations (all of
one image shape, PSF size and pixel scale) are loaded with the same options, their joint models
stacked, and every lens's chains run together through :func:`blindlens.lens_batch.sample_batch`
(one compilation for the whole batch). What differs from a single-lens ``blindlens sample``,
knowingly:

* the lens move is the pure core's fixed-length HMC with the curvature metric, not NUTS
  (:mod:`blindlens.gibbs_core`);
* each chain starts from the best of ``warm_start_tries`` continuous-time draws from prior lens
  draws (as ``--lens-prefit none``): the Sérsic pre-fit and the pooled, ranked chain starts are
  per-lens host-side searches and are not run;
* fixed ``warmup`` and ``draws`` (no convergence-driven stopping, no checkpoints, and no warm-up
  extended while chains settle: ``max_extra_warmup`` is not used);
* ``--warmup-source-move auto`` does not descend (the single-lens run descends only in chains
  whose start misfits; vmapped chains cannot skip a move per chain); ``draw`` or ``refresh``
  descend in every chain;
* the partial-refresh level ``"auto"`` is the first observation's (it fixes the number of
  diffusion steps, which the batch shares); with lens light, so is the light amplitude scale.

Each lens's InferenceData has the same groups as a single-lens run and is written to
``<out_dir>/<stem>.nc``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["sample_observations_batch"]


def sample_observations_batch(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    options=None,
    *,
    batch_size: int | None = None,
    prior=None,
    first_index: int = 0,
    names: Sequence[str] | None = None,
) -> list:
    """Sample several observation files of one shape in one compiled program; one netCDF each.

    Parameters
    ----------
    paths
        Observation files (``.fits`` / ``.npz``), all of one image shape.
    out_dir
        Existing or new folder for ``<stem>.nc``.
    options
        :class:`~blindlens.pipeline.SampleOptions` (prior, guidance, steps, supersampling, lens
        model and light, chains, warmup, draws, warm-start steps and tries, seed, source
        centre); ``draws`` ``None`` means 300. ``prior="auto"`` is resolved by the observations'
        pixel scale (one prior for the batch); ``source_center="auto"`` is the origin here (there
        is no pre-fit to place the grid).
    batch_size
        Lenses vectorised together (:func:`~blindlens.lens_batch.sample_batch`); default: all.
    prior
        An already loaded source prior (else ``options.prior`` is loaded).
    first_index
        Index of ``paths[0]`` in a larger catalogue (keys: ``fold_in(seed key, index)``).
    names
        Output stems, one per path (default: the files' stems): ``<name>.nc``.

    Returns
    -------
    The InferenceData of every lens, in the order of ``paths``.
    """
    import jax

    from .inference.gibbs_core import GibbsCore
    from .inference.gibbsddrm import GibbsDDRMConfig
    from .inference.lens_batch import sample_batch
    from .inference.numpyro_model import joint_model
    from .io.observation import load_observation
    from .physics.grid import PixelGrid
    from .pipeline import (
        DEFAULTS,
        configure_prior,
        load_lens_model,
        load_source_prior,
        observation_options,
        resolve_prior_spec,
        run_lens_model,
        split_gibbs_config,
        warm_start_tries,
        warmup_source_move,
    )
    from .results.batch_results import batch_inference_data
    from .source.likelihood_score import guidance_by_name
    from .source.source_posterior import SourceSamplerConfig

    options = DEFAULTS if options is None else options
    options.validate()
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("sample_observations_batch needs at least one observation file.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if names is not None and len(names) != len(paths):
        raise ValueError(f"names gives {len(names)} output names for {len(paths)} observation files.")
    outs = [out_dir / f"{name}.nc" for name in (names if names is not None else [p.stem for p in paths])]
    if len(set(outs)) != len(outs):
        raise ValueError("two observation files share a file stem; their outputs would overwrite each other: rename one.")
    existing = [str(o) for o in outs if o.exists()]
    if existing:
        raise ValueError(f"{existing[0]} exists; remove it or choose another out_dir (nothing is overwritten).")
    observations = [load_observation(p, psf=options.psf, mask=options.mask, **observation_options(options))
                    for p in paths]
    base_lens_model = load_lens_model(options.lens_model)  # a bad --lens-model fails before the prior loads
    if prior is None:
        spec = options.prior
        if isinstance(spec, str):  # "auto": one shipped prior for the whole batch
            specs = {resolve_prior_spec(spec, obs) for obs in observations}
            if len(specs) > 1:
                raise ValueError(f"--prior {spec} picks different priors ({', '.join(sorted(specs))}) for these "
                                 "observations' pixel scales; batch lenses of one pixel scale or name the prior.")
            spec = specs.pop()
        prior = load_source_prior(spec)
    prior = configure_prior(prior, options)  # --source-size auto: the prior's own (no pre-fit; one grid per batch)
    # one lens model for the batch: the light amplitude scale of the first observation
    lens_model = run_lens_model(base_lens_model, options, observations[0], prior)
    guidance = guidance_by_name(options.guidance)
    center = (0.0, 0.0) if isinstance(options.source_center, str) else tuple(options.source_center)
    grid = PixelGrid(tuple(prior.shape), float(prior.pixel_scale), center)
    models = [joint_model(lens_model, obs, grid, supersampling=options.supersampling) for obs in observations]
    core = GibbsCore.default(
        lens_model, prior, models[0],
        source_config=SourceSamplerConfig(guidance=guidance, num_steps=options.steps, solver=options.solver),
        refresh_sigma=options.refresh_sigma, split_gibbs=split_gibbs_config(options, prior), num_warmup=options.warmup,
        # auto descends per chain by its start's fit; vmapped chains would pay for both moves, so
        # a batch descends only when asked (--warmup-source-move draw|refresh: every chain)
        warmup_source_move=None if options.warmup_source_move == "auto" else warmup_source_move(options),
    )
    batch_size = len(paths) if batch_size is None else int(batch_size)
    t0 = time.time()
    draws = sample_batch(
        jax.random.key(options.seed), core, models, num_samples=300 if options.draws is None else options.draws,
        num_chains=options.chains, prior=prior, warm_start=GibbsDDRMConfig(guidance=guidance,
                                                                            num_steps=options.warm_start_steps),
        warm_start_tries=warm_start_tries(options), batch_size=batch_size, first_index=first_index,
    )
    wall = time.time() - t0
    results = []
    for i, (model, obs, out) in enumerate(zip(models, observations, outs)):
        idata = batch_inference_data(draws, i, model, obs, grid)
        idata.posterior.attrs["wall_seconds"] = wall / len(paths)
        idata.posterior.attrs["batch_size"] = batch_size
        idata.posterior.attrs["lens_move"] = f"fixed-length HMC ({core.num_leapfrog} leapfrog steps), curvature metric"
        idata.to_netcdf(str(out))
        results.append(idata)
    return results
