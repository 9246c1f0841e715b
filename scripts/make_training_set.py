"""Draw the procedural GalSim training set in chunks (resumable: existing chunks are kept).

Usage: python scripts/make_training_set.py --out training_data --num 50000 --chunk 2500 --seed 1
Held-out set (never used for training): --seed 2 --num 2000 --chunk 2000 --out training_data/heldout
"""

import argparse
from pathlib import Path

import numpy as np

from blindlens.galaxies import draw_procedural_galaxies

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--num", type=int, default=50000)
parser.add_argument("--chunk", type=int, default=2500)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--reverse", action="store_true", help="draw chunks last-first (for a second process)")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
starts = list(range(0, args.num, args.chunk))
for start in reversed(starts) if args.reverse else starts:
    path = args.out / f"galaxies_seed{args.seed}_{start:07d}.npy"
    if path.exists() or path.with_suffix(".tmp.npy").exists():
        continue
    n = min(args.chunk, args.num - start)
    images = draw_procedural_galaxies(n, seed=args.seed, start=start, progress=False)
    np.save(path.with_suffix(".tmp.npy"), images)
    path.with_suffix(".tmp.npy").rename(path)
    print(f"wrote {path} ({n} galaxies)", flush=True)
