"""The ``blindlens`` command line.

Each subcommand is registered by an ``_add_<name>`` function and run by a ``_run_<name>``
function; heavy imports happen inside the run functions so ``blindlens --help`` stays fast.
This module parses arguments and reports to the console; nothing imports it. The joint sampling
pipeline (``blindlens sample`` without ``--fixed-lens``) is :mod:`blindlens.pipeline`, driven by a
:class:`~blindlens.pipeline.SampleOptions` built from the arguments; ``blindlens catalogue`` is
:mod:`blindlens.catalogue`.
"""

from __future__ import annotations

import argparse
import sys

from .pipeline import DEFAULTS, SampleOptions

# the joint pipeline lives in blindlens.pipeline; these names stay here for the subcommands and tests
from .pipeline import check_joint_outputs as _check_joint_outputs  # noqa: F401
from .pipeline import load_lens_model as _load_lens_model  # noqa: F401
from .pipeline import load_source_prior as _load_source_prior
from .pipeline import read_input as _read_input
from .pipeline import write_joint_outputs as _write_joint_outputs
from .source import GUIDANCE_NAMES

__all__ = ["main", "build_parser"]


# --- subcommands ----------------------------------------------------------------------------
# (each helper adds its own _add_/_run_ pair below and one line in _REGISTRY)


def _add_make_galaxies(sub) -> None:
    p = sub.add_parser(
        "make-galaxies",
        help="draw procedural GalSim training galaxies (64x64 at 0.05\"/pixel) into .npy chunks",
    )
    p.add_argument("--out", required=True, help="output directory for galaxies_seed<S>_<start>.npy chunks")
    p.add_argument("--num", type=int, default=50000, help="number of galaxies (default 50000)")
    p.add_argument("--chunk", type=int, default=2500, help="galaxies per file (default 2500)")
    p.add_argument("--seed", type=int, default=1, help="population seed (default 1; 2 = held-out set)")
    p.add_argument("--population", choices=("broad", "disk"), default="broad",
                   help="broad: disks, compact, irregular and multi-component galaxies (the 64x64 prior's); "
                        "disk: disk + clumps + bulge only (the 32x32 prior's). Default broad")
    p.set_defaults(run=_run_make_galaxies)


def _run_make_galaxies(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from .prior.galaxies import POPULATIONS, draw_procedural_galaxies

    if args.num < 1 or args.chunk < 1:
        raise ValueError("--num and --chunk must be positive.")
    from .io.run_checkpoint import check_output_dir

    out = check_output_dir("--out", args.out)
    out.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, args.num, args.chunk))
    for start in tqdm(starts, desc="chunks", unit="chunk"):
        tag = "" if args.population == "disk" else f"{args.population}_"  # disk keeps its historical names
        path = out / f"galaxies_{tag}seed{args.seed}_{start:07d}.npy"
        if path.exists():  # resumable: finished chunks are kept
            continue
        images = draw_procedural_galaxies(min(args.chunk, args.num - start), seed=args.seed, start=start,
                                          recipe=POPULATIONS[args.population]())
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, images)
        tmp.rename(path)
    print(f"{args.num} galaxies in {out}")
    return 0


def _add_train_prior(sub) -> None:
    p = sub.add_parser("train-prior", help="train a score-based source prior (denoising score matching)")
    p.add_argument("--data", required=True, help="image set (N, H, W): .npy/.npz/.fits/.h5 or a directory of .npy chunks")
    p.add_argument("--out", required=True,
                   help="output prior file (.eqx; replaced if it exists); a resumable <out>.ckpt is kept beside it")
    p.add_argument("--steps", type=int, default=20000, help="optimisation steps (default 20000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 64], help="U-Net channels per level")
    p.add_argument("--res-blocks", type=int, default=1, help="residual blocks per level")
    p.add_argument("--pixel-unshuffle", type=int, default=1,
                   help="sub-pixel stem factor r: the U-Net runs at (H/r, W/r) on r*r channels (default 1)")
    p.add_argument("--init-from", default=None, metavar="PRIOR",
                   help="start from a trained prior file ('default' for the shipped one); a coarser prior is "
                        "lifted to the data's size with a sub-pixel stem (overrides --channels/--res-blocks)")
    p.add_argument("--sigma-min", type=float, default=0.005)
    p.add_argument("--sigma-max", type=float, default=10.0)
    p.add_argument("--pixel-scale", type=float, default=0.05, help="arcsec/pixel of the training images")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (after a checkpoint) after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    p.set_defaults(run=_run_train_prior)


def _run_train_prior(args) -> int:
    from .io.image_sets import load_image_set
    from .io.run_checkpoint import check_output_paths
    from .prior.score_network import ScoreNetworkConfig
    from .prior.training import TrainingConfig, train_score_prior

    check_output_paths({"--out": args.out, "the checkpoint": args.out + ".ckpt"}, suffixes={"--out": (".eqx",)},
                       inputs={"--data": args.data, "--init-from": getattr(args, "init_from", None)})
    data = _read_input("--data", args.data, load_image_set)
    init_network = None
    if args.init_from is not None:
        from .prior.score_network import lift_to_subpixel

        base = _load_source_prior(args.init_from)
        init_network = base.network
        n_base, n_data = init_network.config.image_size, data.shape[1]
        if n_data != n_base:
            factor = n_data // n_base
            if n_data % n_base or factor & (factor - 1) or init_network.config.pixel_unshuffle != 1:
                raise ValueError(
                    f"--init-from {args.init_from}: a {n_base}x{n_base} prior cannot be lifted to the data's "
                    f"{n_data}x{n_data} (needs a plain prior and a power-of-two size ratio)."
                )
            init_network = lift_to_subpixel(init_network, factor)
        arch = init_network.config
    else:
        arch = ScoreNetworkConfig(
            image_size=data.shape[1],
            channels=tuple(args.channels),
            num_res_blocks=args.res_blocks,
            sigma_data=float(data.std()),
            pixel_unshuffle=args.pixel_unshuffle,
        )
    config = TrainingConfig(
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
        seed=args.seed,
    )
    prior = train_score_prior(
        data,
        args.out,
        num_steps=args.steps,
        network_config=arch,
        config=config,
        pixel_scale=args.pixel_scale,
        checkpoint_every=args.checkpoint_every,
        max_minutes=args.max_minutes,
        resume=not args.no_resume,
        metadata={"training_set": {"path": str(args.data), "num_images": int(data.shape[0])},
                  **({"initialised_from": str(args.init_from)} if args.init_from else {})},
        init_network=init_network,
    )
    print(f"wrote {args.out} after {prior.metadata['training']['steps']} steps")
    return 0


def _add_simulate(sub):
    p = sub.add_parser(
        "simulate",
        help="simulate a lensed observation (FITS/npz) and its truth file",
        description=(
            "Lens a pixelated source, convolve with a Gaussian PSF, add Gaussian noise; write the "
            "observation and <out stem>_truth.npz (lens, source, noiseless image). Without --lens/--source "
            "the bundled example lens and source are used."
        ),
    )
    p.add_argument("--lens", default=None, help="lens TOML ([[profile]] tables); default: bundled example")
    p.add_argument("--source", default=None, help="source array .npy or .fits; default: bundled example")
    p.add_argument("--source-pixel-scale", type=float, default=None,
                   help="source pixel scale [arcsec/pixel] (required with --source; bundled source: 0.05)")
    p.add_argument("--out", required=True,
                   help="output observation (.fits or .npz) in an existing folder; it and <stem>_truth.npz are "
                        "replaced if they exist")
    p.add_argument("--image-shape", type=int, nargs=2, default=(96, 96), metavar=("NY", "NX"))
    p.add_argument("--pixel-scale", type=float, default=0.05, help="image pixel scale [arcsec/pixel]")
    p.add_argument("--psf-fwhm", type=float, default=0.1, help="Gaussian PSF FWHM [arcsec]")
    p.add_argument("--noise-sigma", type=float, default=0.01, help="per-pixel noise sigma (image units)")
    p.add_argument("--supersampling", type=int, default=2, help="rays per pixel per axis (default 2)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--plot", default=None, help="also write a figure (.png/.pdf/.svg: image, source, curves)")
    s = p.add_argument_group("survey layout (docs/real_data.md)")
    s.add_argument("--layout", choices=("simple", "survey"), default="simple",
                   help="simple (default): PIXSCALE/NOISE keywords and PSF/MASK extensions; survey: SCI/ERR/DQ "
                        "extensions with a celestial TAN WCS, the PSF in --psf-out")
    s.add_argument("--rotation", type=float, default=0.0,
                   help="survey layout: rotation of the pixel axes, degrees counter-clockwise in the sky frame "
                        "(x = east, y = north); default 0: north up, east left")
    s.add_argument("--sky-center", type=float, nargs=2, default=(150.1, 2.2), metavar=("RA", "DEC"),
                   help="survey layout: sky position of the image centre, degrees (default 150.1 2.2)")
    s.add_argument("--psf-out", default=None,
                   help="survey layout: write the PSF to this FITS file (default: a PSF extension in --out)")
    s.add_argument("--cosmic-rays", type=int, default=0,
                   help="survey layout: hit this many random pixels with cosmic rays, flagged in DQ (default 0)")
    p.set_defaults(run=_run_simulate)


def _run_simulate(args):
    import jax

    from .io.lens_config import load_lens_config
    from .io.observation import save_observation
    from .io.run_checkpoint import FIGURE_SUFFIXES, check_output_paths
    from .io.simulation import (
        example_lens_path,
        example_source_path,
        load_source,
        plot_observation,
        save_simulated_survey,
        save_truth,
        simulate_observation,
        survey_pix2angle,
        truth_path_for,
    )

    suffixes = {"--out": (".fits", ".fit", ".fts", ".fits.gz", ".npz"), "--plot": FIGURE_SUFFIXES}
    inputs = {"--lens": args.lens, "--source": args.source}
    check_output_paths({"--out": args.out}, suffixes=suffixes, inputs=inputs)
    files = {"--out": args.out, "the truth file": truth_path_for(args.out)}
    if args.plot:
        files["--plot"] = args.plot
    if args.psf_out:
        files["--psf-out"] = args.psf_out
        suffixes["--psf-out"] = (".fits", ".fit", ".fts")
    check_output_paths(files, suffixes=suffixes, inputs=inputs)
    lens = load_lens_config(args.lens or example_lens_path())
    if args.source is None:
        path = example_source_path()
        if not path.exists():
            raise FileNotFoundError(f"no --source given and the bundled example source {path} is missing.")
        source, scale = load_source(path), args.source_pixel_scale or 0.05
    else:
        if args.source_pixel_scale is None:
            raise ValueError("--source-pixel-scale is required with --source (arcsec/pixel).")
        source, scale = _read_input("--source", args.source, load_source), args.source_pixel_scale
    survey = args.layout == "survey"
    if not survey and (args.psf_out or args.cosmic_rays or args.rotation):
        raise ValueError("--psf-out, --cosmic-rays and --rotation need --layout survey.")
    if survey and not str(args.out).lower().endswith((".fits", ".fit", ".fts", ".fits.gz")):
        raise ValueError("--layout survey writes FITS: give --out a .fits name.")
    pix2angle = survey_pix2angle(args.rotation, args.pixel_scale) if survey else None
    obs, noiseless = simulate_observation(
        lens, source, scale, key=jax.random.key(args.seed), image_shape=tuple(args.image_shape),
        pixel_scale=args.pixel_scale, psf_fwhm=args.psf_fwhm, noise_sigma=args.noise_sigma,
        supersampling=args.supersampling, pix2angle=pix2angle,
    )
    if survey:
        out = save_simulated_survey(args.out, obs, pix2angle=pix2angle, noise_sigma=args.noise_sigma,
                                    sky_center=tuple(args.sky_center), cosmic_rays=args.cosmic_rays,
                                    seed=args.seed + 1, psf_out=args.psf_out)
    else:
        out = save_observation(obs, args.out)
    truth = save_truth(
        truth_path_for(out), lens, source, scale, noiseless, args.pixel_scale,
        supersampling=args.supersampling, noise_sigma=args.noise_sigma, psf_fwhm=args.psf_fwhm, seed=args.seed,
    )
    print(f"wrote {out} and {truth}")
    if args.plot:
        fig = plot_observation(obs, args.plot, lens=lens, source=source, source_pixel_scale=scale, noiseless=noiseless)
        print(f"wrote {fig}")
    return 0


def _add_plot_observation(sub):
    p = sub.add_parser(
        "plot-observation",
        help="plot an observation (and, with --truth, its source, critical curves and caustics)",
    )
    p.add_argument("observation", help="observation file (.fits or .npz)")
    p.add_argument("--out", required=True, help="output figure (.png, .pdf or .svg; replaced if it exists)")
    p.add_argument("--truth", default=None, help="truth file written by 'blindlens simulate'")
    p.set_defaults(run=_run_plot_observation)


def _run_plot_observation(args):
    from .io.observation import load_observation
    from .io.run_checkpoint import FIGURE_SUFFIXES, check_output_paths
    from .io.simulation import load_truth, plot_observation

    check_output_paths({"--out": args.out}, suffixes={"--out": FIGURE_SUFFIXES},
                       inputs={"the observation": args.observation, "--truth": args.truth})
    obs = load_observation(args.observation)
    kw = {}
    if args.truth:
        t = _read_input("--truth", args.truth, load_truth)
        kw = dict(lens=t["lens"], source=t["source"], source_pixel_scale=float(t["source_pixel_scale"]),
                  source_center=tuple(t["source_center"]), noiseless=t.get("noiseless_image"))
    print(f"wrote {plot_observation(obs, args.out, **kw)}")
    return 0


def _add_sample(sub):
    p = sub.add_parser(
        "sample",
        help="draw posterior source samples (with --fixed-lens: for a known lens)",
        description=(
            "Draw source samples from p(source | lens, data) with the diffusion prior guided by a "
            "likelihood score, and write ArviZ InferenceData (posterior 'source', observed data, model "
            "images, normalised residuals) plus a summary PNG."
        ),
    )
    p.add_argument("observation", help="observation file (.fits or .npz)")
    p.add_argument("--fixed-lens", default=None, help="lens TOML ([[profile]] tables) to hold fixed")
    p.add_argument("--num-samples", type=int, default=16, help="number of source samples")
    p.add_argument("--polish-moves", type=int, default=0,
                   help="with --fixed-lens: exact split-Gibbs moves after each guided draw (0: none; 10 bring the "
                        "residuals to the true source's level, not the coverage; 20 network passes per move)")
    p.add_argument("--out", required=True,
                   help="output InferenceData (.nc) in an existing folder; outputs are checked before sampling "
                        "starts and replaced if they exist")
    _add_sampling_arguments(p)
    p.add_argument("--batch-size", type=int, default=None, help="samples per compiled batch (bounds memory)")
    p.add_argument("--plot", default=None, help="summary figure with --fixed-lens (default: <out stem>.png)")
    p.add_argument("--strict", action="store_true",
                   help=f"exit with status {STRICT_EXIT} when a run diagnostic fails (R-hat, ESS, divergences, "
                        "chi^2/N, a chain in a worse mode, non-finite values); they are printed either way")
    p.set_defaults(run=_run_sample)


class _SourceCenter(argparse.Action):
    """``--source-center auto`` or ``--source-center X Y`` (two numbers, arcsec)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values == ["auto"]:
            setattr(namespace, self.dest, "auto")
            return
        try:
            if len(values) != 2:
                raise ValueError
            setattr(namespace, self.dest, (float(values[0]), float(values[1])))
        except ValueError:
            parser.error(f"{option_string} takes 'auto' or two numbers X Y [arcsec], got {' '.join(values)!r}")


def _add_sampling_arguments(p) -> None:
    """The sampling options of ``blindlens sample`` (and ``blindlens catalogue``): one per
    :class:`~blindlens.pipeline.SampleOptions` field, ``dest`` = the field, default from ``DEFAULTS``."""
    p.add_argument("--prior", default=DEFAULTS.prior,
                   help="'auto' (default: the shipped prior nearest the data's pixel scale), 'default' (shipped "
                        "32x32 prior at 0.1\"/pixel), 'highres' (shipped 64x64 prior at 0.05\"/pixel, for data at "
                        "HST-like resolution) or a prior file from train-prior")
    p.add_argument("--guidance", choices=GUIDANCE_NAMES, default=DEFAULTS.guidance,
                   help="likelihood score: pigdm (default), calibrated (exact for Gaussian priors, costlier), cla")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps,
                   help=f"reverse-diffusion steps (default {DEFAULTS.steps}: docs/source_posterior.md)")
    p.add_argument("--solver", choices=("auto", "euler", "heun", "imex"), default=DEFAULTS.solver,
                   help="reverse-SDE solver; auto: imex for CLA (stiff), euler otherwise")
    p.add_argument("--source-center", nargs="+", action=_SourceCenter, default=DEFAULTS.source_center,
                   metavar="auto|X Y",
                   help="source-grid centre: 'auto' (default: the lens pre-fit's source, or with --fixed-lens the "
                        "lensed light traced back through the lens) or X Y [arcsec]")
    p.add_argument("--flux-scale", type=float, default=DEFAULTS.flux_scale,
                   help="image units per prior (network) unit; default: the prior's own")
    p.add_argument("--supersampling", type=int, default=DEFAULTS.supersampling, help="rays per image pixel per axis")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="PRNG seed")
    p.add_argument("--psf", default=DEFAULTS.psf,
                   help="PSF FITS file (at the image's pixel scale; default: the observation's PSF extension)")
    p.add_argument("--mask", default=DEFAULTS.mask,
                   help="mask FITS file, nonzero = pixel excluded (besides DQ flags and non-finite pixels)")
    p.add_argument("--cutout-size", type=int, default=DEFAULTS.cutout_size, metavar="N",
                   help="model an N x N cut-out of a larger frame (astropy Cutout2D, WCS carried along) centred on "
                        "--cutout-pixel or --cutout-sky")
    p.add_argument("--cutout-pixel", type=float, nargs=2, default=DEFAULTS.cutout_pixel, metavar=("X", "Y"),
                   help="cut-out centre, 0-based pixel (column, row) of the frame")
    p.add_argument("--cutout-sky", type=float, nargs=2, default=DEFAULTS.cutout_sky, metavar=("RA", "DEC"),
                   help="cut-out centre, sky position in degrees (needs a celestial WCS)")
    _add_joint_sample_arguments(p)


def _run_sample(args):
    from pathlib import Path

    if args.fixed_lens is None:
        if args.polish_moves:
            raise ValueError("--polish-moves polishes fixed-lens source draws; use it with --fixed-lens.")
        return _run_joint_sample(args)
    if args.num_samples < 1 or args.steps < 1 or args.polish_moves < 0:
        raise ValueError("--num-samples and --steps must be >= 1 and --polish-moves >= 0.")
    if args.target_ess is not None or args.max_minutes is not None:
        raise ValueError("--target-ess and --max-minutes are for joint runs; with --fixed-lens use --num-samples "
                         "(the source draws are independent).")
    from .fixed_lens import run_fixed_lens
    from .io.run_checkpoint import FIGURE_SUFFIXES, check_output_paths

    check_output_paths({"--out": args.out, "--plot": args.plot or Path(args.out).with_suffix(".png")},
                       suffixes={"--out": (".nc",), "--plot": FIGURE_SUFFIXES}, inputs=_sample_inputs(args))
    idata = run_fixed_lens(args, None, SampleOptions.from_namespace(args), load_prior=_load_source_prior)
    return _report_run(idata, strict=args.strict)


# --- joint lens + source sampling (blindlens sample without --fixed-lens) and the demo ----------


def _refresh_sigma_arg(text: str):
    """``--refresh-sigma``: 'auto', 'none' or a positive number."""
    if text.lower() == "auto":
        return "auto"
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a noise level, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the refresh noise level must be > 0, got {value}")
    return value


def _add_joint_sample_arguments(p) -> None:
    g = p.add_argument_group("joint lens + source inference (without --fixed-lens)")
    g.add_argument("--lens-model", default=DEFAULTS.lens_model,
                   help="sie+shear (default), epl+shear, epl+shear+multipole, or FILE.py:function (a NumPyro "
                        "model returning a lens)")
    g.add_argument("--chains", type=int, default=DEFAULTS.chains, help=f"MCMC chains (default {DEFAULTS.chains})")
    g.add_argument("--warmup", type=int, default=DEFAULTS.warmup,
                   help="Gibbs warm-up sweeps per chain (NUTS adaptation)")
    g.add_argument("--draws", type=int, default=DEFAULTS.draws,
                   help="posterior draws per chain (default 300); with --target-ess, the most draws per chain "
                        "(default 5000)")
    g.add_argument("--target-ess", type=float, default=DEFAULTS.target_ess,
                   help="run until every lens parameter has ESS >= this (400 is the usual target) and split R-hat "
                        "<= --max-rhat, checking after every --checkpoint-every draws, or until --draws or "
                        "--max-minutes ends; progress lines give the projected time to the target")
    g.add_argument("--max-rhat", type=float, default=DEFAULTS.max_rhat,
                   help=f"R-hat target of --target-ess runs (default {DEFAULTS.max_rhat})")
    g.add_argument("--max-minutes", type=float, default=DEFAULTS.max_minutes,
                   help="wall-clock budget of a --target-ess run (the whole run); a run stopped by it keeps its "
                        "checkpoint, so the same command continues it")
    g.add_argument("--thinning", type=int, default=DEFAULTS.thinning,
                   help="keep every k-th draw (bounds memory of source draws)")
    g.add_argument("--chain-method", choices=("sequential", "parallel", "vectorized"),
                   default=DEFAULTS.chain_method,
                   help="how chains run: sequential (progress bar), parallel (one device per chain), "
                        "vectorized (jax.vmap, no progress bar)")
    g.add_argument("--refresh-sigma", default=DEFAULTS.refresh_sigma, type=_refresh_sigma_arg,
                   help="source move per sweep: 'auto' (partial refresh from 3x the median noise sd), a noise "
                        "level in image units, or 'none' (a full reverse trajectory every sweep)")
    g.add_argument("--warm-start-steps", type=int, default=DEFAULTS.warm_start_steps,
                   help="reverse-SDE steps of the continuous-time GibbsDDRM draw that starts each chain")
    g.add_argument("--warm-start-tries", type=int, default=DEFAULTS.warm_start_tries,
                   help="continuous-time trajectories per chain, pooled over chains and ranked by residual chi^2: "
                        "the chains start from the best-fitting ones (default 4)")
    g.add_argument("--lens-light", choices=("none", "sersic"), default=DEFAULTS.lens_light,
                   help="sersic: model the deflector's light with elliptical Sérsic components (sites "
                        "lens_light_amp, lens_light_R_sersic, ...; docs/real_data.md); none (default): the image "
                        "holds the lensed source only")
    g.add_argument("--lens-light-components", type=int, default=DEFAULTS.lens_light_components,
                   help="Sérsic components of the lens light (default 1)")
    g.add_argument("--tie-light-center", action="store_true", default=DEFAULTS.tie_light_center,
                   help="fix the lens-light centre to the mass centre")
    g.add_argument("--no-fits-products", dest="fits_products", action="store_false",
                   help="do not write the FITS products (model, lens light, lensed source, residuals, source "
                        "mean and sd) beside --out")
    g.add_argument("--lens-prefit", choices=("sersic", "none"), default=DEFAULTS.lens_prefit,
                   help="sersic (default): start the warm-start trajectories from the best lenses of a "
                        "multi-start Sérsic + shapelet fit (finds the lens's basin; docs/joint_inference.md); "
                        "none: from prior draws of the lens")
    g.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every,
                   help="draws per chunk between checkpoints (<out>.ckpt.npz; rerun the same command to resume; "
                        "it is removed when the outputs are written, and refused if written by another run)")
    g.add_argument("--no-resume", action="store_true", help="ignore (and overwrite) an existing checkpoint")
    g.add_argument("--truth", default=DEFAULTS.truth,
                   help="truth file (blindlens simulate) to overlay on the figures")
    g.add_argument("--figures", default=DEFAULTS.figures,
                   help="directory for the figures and summary text (created if missing; default: beside --out)")


def _run_joint_sample(args):
    from . import pipeline

    idata, summary, _ = pipeline._sample(args.observation, args.out, SampleOptions.from_namespace(args),
                                         load_prior=_load_source_prior, write_outputs=_write_joint_outputs)
    return _report_run(idata, summary, strict=args.strict)


def _sample_inputs(args) -> dict:
    """The input files of ``blindlens sample`` (for the output-path checks)."""
    from .pipeline import sample_inputs

    return sample_inputs(args.observation, SampleOptions.from_namespace(args), fixed_lens=args.fixed_lens)


def _sample_fingerprint(args, prior) -> dict:
    """Everything that defines a ``blindlens sample`` joint run, for its checkpoint."""
    from .pipeline import sample_fingerprint

    return sample_fingerprint(args.observation, SampleOptions.from_namespace(args), prior)



STRICT_EXIT = 3
"""Exit status of ``--strict`` runs whose diagnostics failed (:func:`blindlens.check_run`)."""


def _report_run(idata, summary=None, *, strict=False) -> int:
    """Print the run diagnostics (:func:`blindlens.check_run`), append them to ``summary``; the exit code."""
    from .results.run_diagnostics import check_run

    report = check_run(idata, warn=False)  # printed below; Python callers get the warnings
    text = str(report)
    print(text, flush=True)
    if summary is not None:
        from pathlib import Path

        Path(summary).write_text(Path(summary).read_text() + "\n" + text + "\n")
    if not report.ok:
        print(f"blindlens: {len(report.warnings)} diagnostic check(s) failed (see WARNING lines above)"
              + ("" if strict else "; pass --strict to make this a nonzero exit"), file=sys.stderr)
    return STRICT_EXIT if strict and not report.ok else 0


def _add_demo(sub):
    p = sub.add_parser(
        "demo",
        help="simulate a lens from the bundled galaxy and infer lens + source blindly (< 10 min on 2 CPU cores)",
        description=(
            "Simulate the bundled example lens (SIE + shear) with the bundled held-out galaxy, then run "
            "blind joint inference (BlindLensGibbs: diffusion source step + NUTS on the lens, chains "
            "started by continuous-time GibbsDDRM draws) with the default score prior, and write the "
            "InferenceData, figures and a one-page summary (posterior vs truth, chi^2/N, R-hat, ESS)."
        ),
    )
    p.add_argument("--out", required=True,
                   help="output directory (created if missing; files of an earlier demo in it are replaced)")
    p.add_argument("--prior", default="default",
                   help="'default' (shipped 32x32 prior), 'highres' (shipped 64x64 prior at 0.05\"/pixel) or a prior file")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--draws", type=int, default=25)
    p.add_argument("--steps", type=int, default=25, help="reverse-SDE steps per source draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--source-resolution", choices=("prior", "native"), default="prior",
        help="'prior' (default): the bundled galaxy binned to the prior's pixel grid, so the model is well "
        "specified; 'native': simulated at its own 0.05\"/pixel, finer than the prior's grid (a misspecified "
        "model: expect chi^2/N > 1 and biased lens parameters, docs/joint_inference.md)",
    )
    p.add_argument("--strict", action="store_true",
                   help=f"exit with status {STRICT_EXIT} when a run diagnostic fails (the short default demo fails "
                        "R-hat/ESS: run longer)")
    p.set_defaults(run=_run_demo)


def _run_demo(args):
    for name in ("chains", "draws", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1.")
    from .io.run_checkpoint import check_output_dir

    check_output_dir("--out", args.out)
    codes = []
    _demo(args.out, _load_source_prior(args.prior), chains=args.chains, warmup=args.warmup, draws=args.draws,
          steps=args.steps, seed=args.seed, source_resolution=args.source_resolution, strict=args.strict,
          exit_codes=codes)
    return codes[-1] if codes else 0


def _demo(out_dir, prior, *, strict=False, exit_codes=None, **settings):
    """The demo (:func:`blindlens.demo.run_demo`) with the run diagnostics printed and appended to its
    summary; their exit code (``--strict``) is appended to ``exit_codes`` when a list is given.
    Returns the summary path."""
    from .demo import run_demo

    summary, idata = run_demo(out_dir, prior, **settings)
    code = _report_run(idata, summary, strict=strict)
    if exit_codes is not None:
        exit_codes.append(code)
    return summary


def _add_catalogue(sub):
    p = sub.add_parser(
        "catalogue",
        help="model a catalogue of lenses on Dask (one netCDF per lens, a summary table)",
        description=(
            "Run joint inference ('blindlens sample') on every lens of INPUT with Dask distributed: a "
            "LocalCluster of --workers processes, or a running cluster (--scheduler). Writes DIR/<name>.nc "
            "per lens and DIR/summary.csv and DIR/summary.parquet (one row per lens: status, error, "
            "posterior mean, sd and 68% interval of each lens parameter, max R-hat, min ESS, chi^2/N, flags, "
            "wall time). Finished lenses are skipped on a rerun; a failed lens is a row, not a crash. "
            "See docs/catalogue.md."
        ),
    )
    p.add_argument("input", help="a directory or glob of observation files (.fits/.npz; *_truth.npz skipped), or a "
                                 "CSV with a column 'observation', optional 'name' and per-lens option columns "
                                 "(lens_model, truth, seed, ...)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    _add_sampling_arguments(p)
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes of the LocalCluster (one lens at a time each; default 2); 0: lenses in "
                        "sequence in this process, without Dask")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="join a running Dask scheduler (tcp://host:8786, or a scheduler file .json) instead of "
                        "starting a LocalCluster")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="run lenses N at a time in one compiled, vectorised program (the pure Gibbs core: "
                        "fixed-length HMC lens move, no pre-fit; docs/catalogue.md) instead of one 'blindlens "
                        "sample' per lens")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_catalogue)


def _run_catalogue(args):
    from .catalogue import run_catalogue

    table = run_catalogue(args.input, args.out, SampleOptions.from_namespace(args), workers=args.workers,
                          scheduler=args.scheduler, progress=not args.no_progress, batch_size=args.batch_size)
    counts = table["status"].value_counts()
    print(f"{len(table)} lenses: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "flagged", "incomplete",
                                                                               "error"))
          + f" ({int(table['cached'].sum())} finished before); wrote {args.out}/summary.csv and summary.parquet")
    for row in table[table["status"] == "error"].itertuples():
        print(f"  {row.name}: {row.error}", file=sys.stderr)
    return 0


def _add_example(sub):
    p = sub.add_parser("example", help="write the bundled HST-like example (survey FITS, PSF file, truth, lens)",
                       description="Copy the bundled HST-like exposure (SCI/ERR/DQ, rotated east-left WCS, a "
                                   "deflector brighter than the arcs), its PSF file, truth file and lens TOML into a "
                                   "folder, and print the command that models it (docs/real_data.md).")
    p.add_argument("--out", required=True, help="folder to write hst.fits, psf.fits, hst_truth.npz and lens.toml")
    p.set_defaults(run=_run_example)


def _run_example(args):
    from pathlib import Path

    from .io.simulation import write_example_survey

    try:
        paths = write_example_survey(args.out)
    except FileExistsError as err:
        raise ValueError(str(err)) from None
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    print(f"model it with:\n  blindlens sample {paths['observation']} --psf {paths['psf']} --lens-light sersic "
          f"--out {Path(args.out) / 'post.nc'} --truth {paths['truth']}")
    return 0


_REGISTRY: list = [_add_make_galaxies, _add_train_prior, _add_simulate, _add_plot_observation, _add_sample, _add_demo,
                   _add_catalogue, _add_example]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindlens",
        description="Blind strong-lens inversion with a score-based diffusion source prior.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _REGISTRY:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"blindlens {args.command}: error: {err}", file=sys.stderr)
        return 2
