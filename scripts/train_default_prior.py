"""Train a shipped prior on the chunked procedural training set, growing the data as chunks
appear (so training can start while `blindlens make-galaxies` is still drawing).

Usage (what made src/blindlens/data/default_prior.eqx):
    blindlens make-galaxies --out training_data/train --num 50000 --seed 1 --population disk &
    python scripts/train_default_prior.py --data training_data/train --out training_data/default_prior.eqx \
        --until-minutes 110
then copy training_data/default_prior.eqx to src/blindlens/data/.

The 64 x 64 prior at 0.05"/pixel (src/blindlens/data/prior_64.eqx) is the shipped 32 x 32 network
lifted with a sub-pixel stem (``lift_to_subpixel``) and fine-tuned on the broad population:
    blindlens make-galaxies --out training_data/broad --num 16000 --seed 11 &
    python scripts/train_default_prior.py --data training_data/broad --out training_data/prior_64.eqx \
        --bin 1 --init-from default --pattern 'galaxies_broad_seed*_*.npy' --batch-size 64 \\
        --learning-rate 5e-4 --until-minutes 110
Rerunning the same command resumes from training_data/prior_64.eqx.ckpt.
"""

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np

from blindlens.score_network import ScoreNetworkConfig, lift_to_subpixel
from blindlens.score_prior import ScorePrior
from blindlens.training import TrainingConfig, train_score_prior

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--data", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--until-minutes", type=float, default=100.0)
parser.add_argument("--phase-steps", type=int, default=500)
parser.add_argument("--max-steps", type=int, default=200000)
parser.add_argument("--bin", type=int, default=2, help="average bin x bin pixels (64x64 at 0.05\" -> 32x32 at 0.1\")")
parser.add_argument("--init-from", default=None, help="prior file to start from ('default': the shipped one), "
                    "lifted with a sub-pixel stem when coarser than the data")
parser.add_argument("--pattern", default="galaxies_seed*_*.npy", help="chunk file pattern in --data")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--learning-rate", type=float, default=2e-3)
args = parser.parse_args()

began = time.time()
arch_file = args.out.with_suffix(".arch.json")
config = TrainingConfig(batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_steps=300, ema_decay=0.999,
                        sigma_min=0.005, sigma_max=10.0)
step = 0
while step < args.max_steps:
    files = sorted(glob.glob(str(args.data / args.pattern)))
    files = [f for f in files if not f.endswith(".tmp.npy")]
    if not files:
        time.sleep(10)
        continue
    data = np.concatenate([np.load(f) for f in files])
    if args.bin > 1:  # mean over bins conserves surface brightness
        n, h, w = data.shape
        data = data.reshape(n, h // args.bin, args.bin, w // args.bin, args.bin).mean(axis=(2, 4))
    init_network = None
    if args.init_from is not None:
        base = ScorePrior.default() if args.init_from == "default" else ScorePrior.load(args.init_from)
        factor = data.shape[1] // base.network.config.image_size
        init_network = lift_to_subpixel(base.network, factor) if factor > 1 else base.network
        arch = init_network.config
    elif arch_file.exists():
        arch = ScoreNetworkConfig.from_dict(json.loads(arch_file.read_text()))
    else:
        arch = ScoreNetworkConfig(image_size=data.shape[1], channels=(16, 32, 64), num_res_blocks=2,
                                  embedding_dim=64, sigma_data=float(data.std()))
        arch_file.write_text(json.dumps(arch.to_dict()))
    left = args.until_minutes - (time.time() - began) / 60
    if left <= 0:
        break
    step += args.phase_steps
    prior = train_score_prior(
        data, args.out, num_steps=step, network_config=arch, config=config, pixel_scale=0.05 * args.bin,
        checkpoint_every=250, max_minutes=left, resume=True, progress=False, init_network=init_network,
        metadata={"training_set": {"kind": "GalSim procedural (blindlens.galaxies), 64x64 at 0.05\"/pixel "
                                           f"binned {args.bin}x{args.bin}", "files": args.pattern,
                                   "num_images": int(data.shape[0])},
                  **({"initialised_from": args.init_from} if args.init_from else {})},
    )
    step = prior.metadata["training"]["steps"]
    print(f"{time.strftime('%H:%M:%S')} step {step} on {data.shape[0]} galaxies, "
          f"loss {prior.metadata['training']['final_loss']:.4f}", flush=True)
