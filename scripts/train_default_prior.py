"""Train the shipped default prior on the chunked procedural training set, growing the data as
chunks appear (so training can start while `blindlens make-galaxies` is still drawing).

Usage (what made src/blindlens/data/default_prior.eqx):
    blindlens make-galaxies --out training_data/train --num 50000 --seed 1 &
    python scripts/train_default_prior.py --data training_data/train --out training_data/default_prior.eqx \
        --until-minutes 110
then copy training_data/default_prior.eqx to src/blindlens/data/.
"""

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np

from blindlens.score_network import ScoreNetworkConfig
from blindlens.training import TrainingConfig, train_score_prior

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--data", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--until-minutes", type=float, default=100.0)
parser.add_argument("--phase-steps", type=int, default=500)
parser.add_argument("--max-steps", type=int, default=200000)
parser.add_argument("--bin", type=int, default=2, help="average bin x bin pixels (64x64 at 0.05\" -> 32x32 at 0.1\")")
args = parser.parse_args()

began = time.time()
arch_file = args.out.with_suffix(".arch.json")
config = TrainingConfig(batch_size=32, learning_rate=2e-3, warmup_steps=300, ema_decay=0.999,
                        sigma_min=0.005, sigma_max=10.0)
step = 0
while step < args.max_steps:
    files = sorted(glob.glob(str(args.data / "galaxies_seed*_*.npy")))
    files = [f for f in files if not f.endswith(".tmp.npy")]
    if not files:
        time.sleep(10)
        continue
    data = np.concatenate([np.load(f) for f in files])
    if args.bin > 1:  # mean over bins conserves surface brightness
        n, h, w = data.shape
        data = data.reshape(n, h // args.bin, args.bin, w // args.bin, args.bin).mean(axis=(2, 4))
    if arch_file.exists():
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
        checkpoint_every=250, max_minutes=left, resume=True, progress=False,
        metadata={"training_set": {"kind": "GalSim procedural (blindlens.galaxies), 64x64 at 0.05\"/pixel "
                                           f"binned {args.bin}x{args.bin}", "seed": 1,
                                   "num_images": int(data.shape[0])}},
    )
    step = prior.metadata["training"]["steps"]
    print(f"{time.strftime('%H:%M:%S')} step {step} on {data.shape[0]} galaxies, "
          f"loss {prior.metadata['training']['final_loss']:.4f}", flush=True)
