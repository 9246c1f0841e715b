"""Train score priors on a GPU machine from a compact, lossless-enough copy of the training set.

Two steps, because the GPU machine has no GalSim and receives at most 64 MiB of files:

``pack`` (here, after ``blindlens make-galaxies``) optionally bins the 64x64 GalSim galaxies
(``--bin 2``: mean over 2x2, surface brightness conserved), quantises each image to ``--bits``
between its own minimum and maximum (16 bits: error <= 7.7e-6 of the image's peak; 12 bits:
<= 1.2e-4, still 40x below the smallest training noise sigma_min = 0.005 at the faintest peak
0.5) and stores the high and low byte planes LZMA-compressed::

    python scripts/gpu_train_prior.py pack --data training_data/train --out training_data/gpu/train32.blz
    python scripts/gpu_train_prior.py pack --data training_data/broad --pattern 'galaxies_broad_seed*_*.npy' \
        --bin 1 --bits 12 --out training_data/gpu/broad64.blz

``train`` (on the GPU machine, ``PYTHONPATH=src``; numpy/jax/equinox/optax/diffrax only) unpacks
and runs :func:`blindlens.training.train_score_prior` with ``steps_per_call`` scanned steps,
exporting the EMA prior every ``--checkpoint-every`` steps so a killed run still leaves one. It
starts from random weights, from ``--init-from default`` (the shipped 32x32 prior lifted with a
sub-pixel stem when the data are finer, or a
sub-pixel network such as ``src/blindlens/data/prior_64.eqx`` on a canvas as much larger) or continues ``--resume-ckpt`` (a checkpoint such as
``training/prior_64.eqx.ckpt``, whose network it takes)::

    python scripts/gpu_train_prior.py train --packed training_data/gpu/train32.blz --out OUT \
        --tag A --channels 16,32,64 --minutes 7

What made the shipped priors is recorded in docs/prior.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import lzma
import shutil
import sys
import time
from pathlib import Path

import numpy as np

MAGIC = b"BLZ1"


def pack(data_dir: Path, out: Path, bin_factor: int, bits: int = 16, pattern: str = "galaxies_seed*_*.npy") -> None:
    if not 8 < bits <= 16:
        sys.exit(f"--bits must be in 9..16, got {bits}.")
    files = sorted(f for f in glob.glob(str(data_dir / pattern)) if ".part" not in f and ".tmp" not in f)
    if not files:
        sys.exit(f"no {pattern} chunks in {data_dir}; run `blindlens make-galaxies` first.")
    images = np.concatenate([np.load(f) for f in files]).astype(np.float64)
    n, h, w = images.shape
    b = bin_factor
    images = images.reshape(n, h // b, b, w // b, b).mean(axis=(2, 4))
    lo = images.min(axis=(1, 2), keepdims=True)
    hi = images.max(axis=(1, 2), keepdims=True)
    levels = 2**bits - 1
    q = np.round((images - lo) / (hi - lo) * levels).astype(np.uint16)
    planes = np.stack([(q >> 8).astype(np.uint8), (q & 255).astype(np.uint8)])
    header = {"shape": list(q.shape), "bin": b, "bits": bits, "files": [Path(f).name for f in files]}
    payload = lzma.compress(planes.tobytes() + lo.astype(np.float64).tobytes() + hi.astype(np.float64).tobytes())
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(MAGIC + (json.dumps(header) + "\n").encode() + payload)
    back, _ = unpack(out)
    err = float(np.max(np.abs(back - images) / hi))
    print(f"packed {n} galaxies {q.shape[1:]} ({bits} bits) from {len(files)} chunks: "
          f"{out.stat().st_size / 2**20:.1f} MiB, max error {err:.2e} of each image's peak")


def unpack(path: Path) -> tuple[np.ndarray, dict]:
    """The images of a packed file and its header (``shape``, ``bin``, ``bits``, ``files``)."""
    raw = Path(path).read_bytes()
    if raw[:4] != MAGIC:
        raise ValueError(f"{path} is not a packed training set (made by `pack`).")
    newline = raw.index(b"\n")
    header = json.loads(raw[4:newline])
    n, h, w = header["shape"]
    levels = 2 ** header.get("bits", 16) - 1
    body = lzma.decompress(raw[newline + 1 :])
    planes = np.frombuffer(body[: 2 * n * h * w], np.uint8).reshape(2, n, h, w)
    lo = np.frombuffer(body[2 * n * h * w : 2 * n * h * w + 8 * n], np.float64).reshape(n, 1, 1)
    hi = np.frombuffer(body[2 * n * h * w + 8 * n :], np.float64).reshape(n, 1, 1)
    q = (planes[0].astype(np.uint16) << 8) | planes[1]
    return lo + q / levels * (hi - lo), header


def train(args) -> None:
    import jax

    from blindlens.score_network import ScoreNetworkConfig, ScoreUNet
    from blindlens.training import TrainingConfig, train_score_prior

    print(f"{args.tag}: devices {jax.devices()}", flush=True)
    began = time.time()
    data, packed = unpack(args.packed)
    data = data.astype(np.float32)
    pixel_scale = 3.2 / data.shape[1]  # every training set covers the same 3.2" field
    print(f"{args.tag}: {data.shape[0]} galaxies {data.shape[1:]} at {pixel_scale}\"/pixel unpacked in "
          f"{time.time() - began:.1f} s", flush=True)
    out = Path(args.out) / f"prior_{args.tag}.eqx"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / f"prior_{args.tag}.eqx"  # the large optimiser checkpoint stays off $OUT
    scratch_ckpt = scratch.with_suffix(".eqx.ckpt")
    init_network = None
    step = 0
    if args.resume_ckpt is not None:
        shutil.copyfile(args.resume_ckpt, scratch_ckpt)
        with open(args.resume_ckpt, "rb") as f:
            resumed = json.loads(f.readline())
        arch = ScoreNetworkConfig.from_dict(resumed["network"])
        step = int(resumed["history"][-1][0]) if resumed.get("history") else 0
    elif args.init_from is not None:
        from blindlens.score_network import lift_to_subpixel
        from blindlens.score_prior import ScorePrior

        base = ScorePrior.default() if args.init_from == "default" else ScorePrior.load(args.init_from)
        old = base.network.config
        factor = data.shape[1] // old.image_size
        if factor > 1 and old.pixel_unshuffle == 1:
            init_network = lift_to_subpixel(base.network, factor)
        elif factor > 1:  # a fully convolutional network: the same weights on a larger canvas
            arch = ScoreNetworkConfig.from_dict({**old.to_dict(), "image_size": data.shape[1]})
            skeleton = ScoreUNet(arch, key=jax.random.key(0))
            init_network = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(skeleton),
                                                         jax.tree_util.tree_leaves(base.network))
        else:
            init_network = base.network
        arch = init_network.config
    else:
        channels = tuple(int(c) for c in args.channels.split(","))
        arch = ScoreNetworkConfig(image_size=data.shape[1], channels=channels, num_res_blocks=args.res_blocks,
                                  embedding_dim=args.embedding_dim, sigma_data=float(data.std()),
                                  pixel_unshuffle=args.pixel_unshuffle)
    config = TrainingConfig(batch_size=args.batch, learning_rate=args.lr, warmup_steps=args.warmup,
                            ema_decay=args.ema, sigma_min=0.005, sigma_max=10.0, seed=args.seed)
    n, b = data.shape[1], packed.get("bin", 2)
    meta = {"training_set": {"kind": f"GalSim procedural (blindlens.galaxies), {n}x{n} at {pixel_scale:g}\"/pixel"
                                     f"{f' (binned {b}x{b})' if b > 1 else ''}, {packed.get('bits', 16)}-bit packed "
                                     "(scripts/gpu_train_prior.py)",
                             "files": sorted({f.rsplit("_", 1)[0] for f in packed.get("files", [])}),
                             "num_images": int(data.shape[0])},
            "hardware": str(jax.devices()[0].device_kind),
            **({"initialised_from": args.init_from} if args.init_from else {}),
            **({"continued_from": Path(args.resume_ckpt).name} if args.resume_ckpt else {})}
    print(f"{args.tag}: network {arch.to_dict()}, from step {step}", flush=True)
    deadline = began + 60 * args.minutes
    while time.time() < deadline:
        phase_began = time.time()
        step += args.checkpoint_every
        prior = train_score_prior(data, scratch, num_steps=step, network_config=arch, config=config,
                                  pixel_scale=pixel_scale, checkpoint_every=args.checkpoint_every,
                                  max_minutes=(deadline - time.time()) / 60, resume=True, progress=False,
                                  metadata=meta, steps_per_call=args.steps_per_call,
                                  init_network=init_network)
        done = prior.metadata["training"]["steps"]
        prior.save(out)
        if args.keep_ckpt:
            shutil.copyfile(scratch_ckpt, Path(args.out) / f"prior_{args.tag}.eqx.ckpt")
        rate = (done - (step - args.checkpoint_every)) / (time.time() - phase_began)
        step = done
        print(f"{args.tag}: {time.time() - began:6.1f} s step {step} loss "
              f"{prior.metadata['training']['final_loss']:.4f} ({rate:.0f} steps/s)", flush=True)
    print(f"{args.tag}: done, {step} steps, wrote {out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bin", type=int, default=2)
    p.add_argument("--bits", type=int, default=16)
    p.add_argument("--pattern", default="galaxies_seed*_*.npy", help="chunk file pattern in --data")
    t = sub.add_parser("train")
    t.add_argument("--packed", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--workdir", type=Path, default=Path("/tmp/blindlens_train"))
    t.add_argument("--tag", required=True)
    t.add_argument("--channels", default="16,32,64")
    t.add_argument("--res-blocks", type=int, default=2)
    t.add_argument("--embedding-dim", type=int, default=64)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--ema", type=float, default=0.9995)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--warmup", type=int, default=1000)
    t.add_argument("--pixel-unshuffle", type=int, default=1)
    t.add_argument("--init-from", default=None, help="prior file ('default': the shipped 32x32 one) to start from")
    t.add_argument("--resume-ckpt", type=Path, default=None, help="training checkpoint to continue")
    t.add_argument("--keep-ckpt", action="store_true", help="also copy the optimiser checkpoint to --out")
    t.add_argument("--minutes", type=float, default=7.0)
    t.add_argument("--checkpoint-every", type=int, default=2000)
    t.add_argument("--steps-per-call", type=int, default=100)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.data, args.out, args.bin, args.bits, args.pattern)
    else:
        train(args)


if __name__ == "__main__":
    main()
