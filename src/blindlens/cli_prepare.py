"""``blindlens`` subcommands that prepare inputs: galaxy sets, priors, simulated observations, the example.

``make-galaxies``, ``train-prior``, ``simulate``, ``plot-observation`` and ``example``, each an
``_add_<name>``/``_run_<name>`` pair that :mod:`blindlens.cli` registers; the sampling commands
(``sample``, ``demo``, ``catalogue``) live there. Heavy imports happen inside the run functions.
"""

from __future__ import annotations

from .pipeline import load_source_prior as _load_source_prior
from .pipeline import read_input as _read_input

__all__: list[str] = []


def _add_make_galaxies(sub) -> None:
    p = sub.add_parser(
        "make-galaxies",
        help="draw procedural GalSim training galaxies (64x64 at 0.05\"/pixel by default) into .npy chunks",
    )
    p.add_argument("--out", required=True, help="output directory for galaxies_seed<S>_<start>.npy chunks")
    p.add_argument("--num", type=int, default=50000, help="number of galaxies (default 50000)")
    p.add_argument("--chunk", type=int, default=2500, help="galaxies per file (default 2500)")
    p.add_argument("--seed", type=int, default=1, help="population seed (default 1; 2 = held-out set)")
    p.add_argument("--population", choices=("broad", "disk"), default="broad",
                   help="broad: disks, compact, irregular and multi-component galaxies (the 64x64 prior's); "
                        "disk: disk + clumps + bulge only (the 32x32 prior's). Default broad")
    p.add_argument("--pixel-scale", type=float, default=0.05,
                   help="arcsec per pixel over the same 3.2\" field (default 0.05: 64x64; 0.025: 128x128); "
                        "brightness stays in the units of 0.05\" pixels")
    p.set_defaults(run=_run_make_galaxies)


def _run_make_galaxies(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from .prior.galaxies import POPULATIONS, draw_procedural_galaxies

    if args.num < 1 or args.chunk < 1:
        raise ValueError("--num and --chunk must be positive.")
    from .io.run_checkpoint import check_output_dir

    size = round(3.2 / args.pixel_scale) if args.pixel_scale > 0 else 0
    if size < 4 or abs(size * args.pixel_scale - 3.2) > 1e-6:
        raise ValueError(f"--pixel-scale {args.pixel_scale} does not divide the 3.2\" field into whole pixels; "
                         "use e.g. 0.05 or 0.025.")
    recipe = POPULATIONS[args.population](image_size=size, pixel_scale=args.pixel_scale)
    out = check_output_dir("--out", args.out)
    out.mkdir(parents=True, exist_ok=True)
    fine = "" if size == 64 else f"{size}px_"
    starts = list(range(0, args.num, args.chunk))
    for start in tqdm(starts, desc="chunks", unit="chunk"):
        tag = "" if args.population == "disk" else f"{args.population}_"  # disk keeps its historical names
        path = out / f"galaxies_{tag}{fine}seed{args.seed}_{start:07d}.npy"
        if path.exists():  # resumable: finished chunks are kept
            continue
        images = draw_procedural_galaxies(min(args.chunk, args.num - start), seed=args.seed, start=start,
                                          recipe=recipe)
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
