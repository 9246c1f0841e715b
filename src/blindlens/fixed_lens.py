"""``blindlens sample --fixed-lens``: source draws for a given lens, written as InferenceData.

Independent guided reverse-diffusion draws of the source given a lens file (optionally polished by
exact split-Gibbs moves, :mod:`blindlens.source.split_gibbs`), the netCDF posterior and a summary
figure; :mod:`blindlens.cli` checks the options and output paths and prints the diagnostics.
"""

from __future__ import annotations

__all__ = ["run_fixed_lens"]


def run_fixed_lens(args, prior, options, *, load_prior=None):
    """The fixed-lens run of parsed ``blindlens sample`` options ``args`` with the loaded source ``prior``
    (``options``: the same as a :class:`~blindlens.pipeline.SampleOptions`, for the observation's
    companions). Writes ``args.out`` and the figure; returns the InferenceData.

    ``prior=None`` loads ``args.prior`` with ``load_prior`` (default
    :func:`~blindlens.pipeline.load_source_prior`), ``"auto"`` resolved by the observation's pixel
    scale. ``--source-center auto`` centres the source grid on the data's light traced back
    through the lens (:func:`~blindlens.lensing_operator.source_centroid`)."""
    from pathlib import Path

    import equinox as eqx
    import jax

    from .inference.chain_runner import RunClock
    from .io.lens_config import load_lens_config
    from .io.observation import load_observation
    from .physics.lensing_operator import source_centroid, source_extent
    from .physics.light_profiles import LensLightImager, light_of, mass_of
    from .pipeline import configure_prior, load_source_prior, observation_options, resolve_prior_spec
    from .source_setup import grid_size_for_reach, sized_prior
    from .results.arviz_conversion import fixed_lens_inference_data
    from .source.likelihood_score import guidance_by_name
    from .source.source_posterior import (
        SourceSamplerConfig,
        fixed_lens_operator,
        fixed_lens_posterior,
        plot_fixed_lens_summary,
    )

    obs = load_observation(args.observation, psf=args.psf, mask=args.mask, **observation_options(options))
    lens = load_lens_config(args.fixed_lens)
    prior_name = args.prior if isinstance(args.prior, str) else "object"
    if prior is None:
        spec = prior_name = resolve_prior_spec(args.prior, obs)
        if spec != args.prior:
            print(f"source prior: {spec} (--prior auto: the shipped prior nearest the data's "
                  f"{obs.pixel_scale:.3g}\"/pixel)", flush=True)
        prior = (load_prior or load_source_prior)(spec)
    prior = configure_prior(prior, options)
    # The lens file's [[light]] tables are held fixed like its mass: their PSF-convolved image is
    # subtracted from the data the source is drawn from and added back to every model image.
    data = obs.image
    light_image = None
    if light_of(lens) is not None:
        psf = None if obs.psf is None else obs.psf_operator()
        light_image = LensLightImager(obs.image_grid, psf, args.supersampling)(light_of(lens))
        data = data - light_image
        print(f"deflector light: {len(light_of(lens).components)} fixed Sérsic component(s) from {args.fixed_lens} "
              "subtracted before the source draws", flush=True)
    center = args.source_center
    if isinstance(center, str):  # "auto": the data's light traced back through the lens
        center = source_centroid(mass_of(lens), data, obs.noise, obs.image_grid, mask=obs.mask)
        print(f"source grid centred on the lensed light traced back through the lens at ({center[0]:+.3f}, "
              f"{center[1]:+.3f})\" (--source-center auto)", flush=True)
    if options.source_size == "auto":  # the grid side that holds the data's light, traced back through the lens
        reach = source_extent(mass_of(lens), data, obs.noise, obs.image_grid, tuple(center), mask=obs.mask)
        prior = sized_prior(prior, grid_size_for_reach(prior, reach, verbose=True))
    op = fixed_lens_operator(obs, lens, prior, source_center=tuple(center), supersampling=args.supersampling)
    guidance = guidance_by_name(args.guidance)
    config = SourceSamplerConfig(guidance=guidance, num_steps=args.steps, solver=args.solver)
    clock = RunClock()
    clock.say(f"fixed lens: compiling and drawing {args.num_samples} source samples of {args.steps} reverse-SDE "
              f"steps{'' if args.batch_size is None else f' in batches of {args.batch_size}'} ...")
    if args.polish_moves:
        clock.say(f"each draw then polished by {args.polish_moves} exact split-Gibbs moves")
    result = fixed_lens_posterior(
        jax.random.key(args.seed), prior, op, data, obs.noise, num_samples=args.num_samples,
        config=config, batch_size=args.batch_size, polish_moves=args.polish_moves,
    )
    if light_image is not None:  # residuals against (data - light) equal those against the data
        result = eqx.tree_at(lambda r: r.model_images, result, result.model_images + light_image)
    clock.say(f"{args.num_samples} source samples drawn")
    settings = {"guidance": args.guidance, "steps": args.steps, "solver": args.solver, "seed": args.seed,
                "prior": str(prior_name), "lens_file": str(args.fixed_lens), "polish_moves": args.polish_moves}
    idata = fixed_lens_inference_data(result.samples, result.model_images, obs, op.source_grid, attrs=settings)
    out = Path(args.out)
    idata.to_netcdf(str(out))
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot_fixed_lens_summary(obs, result, op.source_grid, plot)
    chi2 = result.chi2 / result.num_pixels
    print(f"wrote {out} and {plot}; residual chi2/N per sample: mean {float(chi2.mean()):.3f}, "
          f"min {float(chi2.min()):.3f}, max {float(chi2.max()):.3f} (N = {result.num_pixels})")
    return idata
