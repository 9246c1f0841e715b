"""Make ``docs/figures/simulated_lens.png``: a simulated observation of the bundled example lens
(image with critical curves, noiseless model, source with caustics). Uses the bundled example
source when the package ships it, else the analytic benchmark source. Run::

    .venv/bin/python scripts/conventions_figure.py
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from blindlens.lens_config import load_lens_config  # noqa: E402
from blindlens.simulation import (  # noqa: E402
    example_lens_path,
    example_source_path,
    load_source,
    plot_observation,
    simulate_observation,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def main(out="docs/figures/simulated_lens.png"):
    lens = load_lens_config(example_lens_path())
    if example_source_path().exists():
        source, label = load_source(example_source_path()), "bundled example source"
    else:
        from forward import make_source

        source, label = make_source(), "analytic benchmark source"
    obs, clean = simulate_observation(lens, source, 0.05, key=jax.random.key(0), image_shape=(96, 96),
                                      pixel_scale=0.05, psf_fwhm=0.1, noise_sigma=0.01, supersampling=2)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    plot_observation(obs, out, lens=lens, source=source, source_pixel_scale=0.05, noiseless=np.asarray(clean))
    print(f"wrote {out} ({label})")


if __name__ == "__main__":
    main(*sys.argv[1:])
