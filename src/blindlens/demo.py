"""``blindlens demo``: simulate the bundled lens, infer it blindly, write the posterior and figures.

The command line's demo (:mod:`blindlens.cli` parses its options and prints the run diagnostics);
tests run it with a small Gaussian prior in place of the network.
"""

from __future__ import annotations

from .pipeline import truth_values, write_joint_outputs

__all__ = ["run_demo", "demo_fingerprint"]


def demo_fingerprint(obs, lens_model, prior, **settings) -> dict:
    """Everything that defines a demo run (the simulated observation by content), for its checkpoint."""
    from . import __version__
    from .io.run_checkpoint import prior_fingerprint, tree_sha256

    return {"observation": tree_sha256((obs, obs.pixel_scale, obs.center)),
            "lens_model": f"{lens_model.__module__}.{lens_model.__qualname__}", "prior": prior_fingerprint(prior),
            **settings, "blindlens": __version__}


def run_demo(out_dir, prior, *, chains=2, warmup=60, draws=60, steps=40, seed=0, image_shape=(72, 72),
             pixel_scale=0.05, noise_sigma=None, source=None, source_pixel_scale=None, lens=None,
             lens_model=None, progress=True, max_tree_depth=5, source_resolution="prior"):
    """The demo pipeline for any source prior (tests pass a small Gaussian prior and source).

    Simulates ``lens`` (default: the bundled example lens) observing ``source`` (default: the
    bundled held-out galaxy, binned to the prior's pixel grid unless ``source_resolution="native"``),
    runs BlindLensGibbs and writes
    ``posterior.nc``, figures and ``summary.txt`` into ``out_dir``. Returns ``(summary path, idata)``;
    the command line then prints the run diagnostics (:func:`blindlens.check_run`).
    """
    import time
    from pathlib import Path

    import jax
    import numpy as np

    from .inference.chain_runner import RunClock, run_chains
    from .inference.gibbs_kernel import BlindLensGibbs
    from .inference.gibbsddrm import GibbsDDRMConfig
    from .inference.numpyro_model import lens_site_names, sie_shear
    from .io.image_sets import bin_images
    from .io.lens_config import load_lens_config
    from .io.observation import save_observation
    from .io.run_checkpoint import checkpoint_path
    from .io.simulation import (
        example_lens_path,
        example_source_path,
        load_source,
        save_truth,
        simulate_observation,
    )
    from .results.arviz_conversion import to_inference_data
    from .source.likelihood_score import PiGDM
    from .source.source_posterior import SourceSamplerConfig

    t_start = time.time()
    clock = RunClock(progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lens = load_lens_config(example_lens_path()) if lens is None else lens
    lens_model = sie_shear if lens_model is None else lens_model
    if source is None:
        source, source_pixel_scale = np.asarray(load_source(example_source_path()), float), 0.05
        if source_resolution == "prior":  # bin to the prior's grid: the inference model is then well specified
            factor = float(prior.pixel_scale) / source_pixel_scale
            b = int(round(factor))
            if abs(factor - b) > 1e-6 or b < 1 or source.shape[0] % b or source.shape[1] % b:
                raise ValueError(
                    f"the bundled source ({source.shape} at {source_pixel_scale}\"/pixel) cannot be binned to the "
                    f"prior's {prior.pixel_scale}\"/pixel grid; use --source-resolution native."
                )
            source = bin_images(source, b)
            source_pixel_scale *= b
        elif source_resolution != "native":
            raise ValueError(f"source_resolution must be 'prior' or 'native', got {source_resolution!r}.")
    source = np.asarray(source, float)  # simulated at its own resolution; inferred on the prior's grid
    if source_pixel_scale is None:
        source_pixel_scale = float(prior.pixel_scale)
    if noise_sigma is None:  # peak signal-to-noise about 20 per pixel
        noise_sigma = float(np.max(source)) / 20.0
    obs, noiseless = simulate_observation(
        lens, source, source_pixel_scale, key=jax.random.key(seed + 1000), image_shape=tuple(image_shape),
        pixel_scale=pixel_scale, psf_fwhm=2 * pixel_scale, noise_sigma=noise_sigma, supersampling=2,
    )
    save_observation(obs, out / "observation.npz")
    save_truth(out / "observation_truth.npz", lens, source, source_pixel_scale, noiseless, pixel_scale,
               supersampling=2, noise_sigma=noise_sigma, psf_fwhm=2 * pixel_scale, seed=seed + 1000)
    sites = lens_site_names(lens_model)
    truth = truth_values(lens, sites)
    guidance = PiGDM()
    kernel = BlindLensGibbs(
        lens_model, obs, prior,
        source_config=SourceSamplerConfig(guidance=guidance, num_steps=steps),
        warm_start=GibbsDDRMConfig(guidance=guidance, num_steps=max(steps, 50)),
        # curvature-metric NUTS (the core's lens move); a shallow tree bounds the cost of a sweep early in warm-up
        target_accept_prob=0.8, max_tree_depth=max_tree_depth,
    )
    print(f"demo: {chains} chains x ({warmup} warm-up + {draws} draws) Gibbs sweeps, {steps} reverse-SDE steps "
          f"per source draw; lens parameters {', '.join(sites)}")
    run = run_chains(
        kernel, jax.random.key(seed), num_chains=chains, num_warmup=warmup, num_draws=draws, chunk=draws,
        checkpoint=checkpoint_path(out / "posterior.nc"), resume=True, progress=progress, clock=clock,
        fingerprint=demo_fingerprint(obs, lens_model, prior, chains=chains, warmup=warmup, draws=draws, steps=steps,
                                      seed=seed, max_tree_depth=max_tree_depth),
    )
    clock.say("sampling done; computing model images and writing outputs ...")
    idata = to_inference_data(run.samples, obs, kernel=kernel, sample_stats=run.stats, truth=truth)
    wall = time.time() - t_start
    idata.posterior.attrs["wall_seconds"] = float(wall)
    summary = write_joint_outputs(idata, out / "posterior.nc", out, truth,
                                   title=f"blindlens demo (wall time {wall / 60:.1f} min)", lens_model=lens_model,
                                   truth_file={"lens": lens, "source": source, "source_pixel_scale": source_pixel_scale})
    checkpoint_path(out / "posterior.nc").unlink(missing_ok=True)  # complete: the outputs are written
    clock.say("done")
    return summary, idata
