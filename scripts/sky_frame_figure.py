"""Make ``docs/figures/sky_frame.png``: the sky frame of an image with a rotated, east-left WCS.

Left: the pixel array as stored (column ``i`` right, row ``j`` up), with the north and east
directions of its CD matrix. Right: the same pixels placed in blindlens's sky frame
(``x`` = offset in RA cos(Dec), positive east; ``y`` = offset in Dec, positive north; drawn east
to the left, as on the sky), with the lens's critical curve computed in that frame. Run::

    .venv/bin/python scripts/sky_frame_figure.py
"""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from blindlens.lens_models import SIE, CompositeLens, ExternalShear, critical_curves_and_caustics  # noqa: E402
from blindlens.observation import Observation  # noqa: E402
from blindlens.parametric_prefit import SersicImager  # noqa: E402
from blindlens.psf import gaussian_psf  # noqa: E402


def main(out="docs/figures/sky_frame.png", n=64, scale=0.05, angle_deg=30.0):
    t = np.deg2rad(angle_deg)
    pix2angle = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.diag([-scale, scale])
    kernel = gaussian_psf(2 * scale, scale)
    obs = Observation(np.zeros((n, n)), 1.0, kernel, None, pix2angle=pix2angle)
    lens = CompositeLens((SIE(1.0, 0.15, 0.0, 0.0, 0.0), ExternalShear(0.03, 0.0)))
    # a source east of the lens: the arcs sit on the east (left, on the sky) side
    image = np.asarray(SersicImager(obs, 2)(lens, 1.0, 0.12, 1.5, 0.0, 0.0, 0.15, 0.05))
    grid = obs.image_grid
    critical, _ = critical_curves_and_caustics(lens, grid, supersampling=2)

    fig, (ax_p, ax_s) = plt.subplots(1, 2, figsize=(10, 4.8))
    ax_p.imshow(image, origin="lower", cmap="magma")
    c = (n - 1) / 2
    inverse = np.linalg.inv(pix2angle)
    for (dx, dy), label in (((0.8, 0.0), "E (+x)"), ((0.0, 0.8), "N (+y)")):
        di, dj = inverse @ np.array([dx, dy])
        ax_p.annotate("", xy=(c + di, c + dj), xytext=(c, c), arrowprops=dict(color="cyan", width=1.5, headwidth=7))
        ax_p.text(c + 1.15 * di, c + 1.15 * dj, label, color="cyan", ha="center", va="center")
    ax_p.set_xlabel("column i [pixel]")
    ax_p.set_ylabel("row j [pixel]")
    ax_p.set_title(f"stored array (CD rotated {angle_deg:g} deg, CD1_1 < 0)")

    grid.show(ax_s, image, cmap="magma")
    for line in critical:
        ax_s.plot(line[:, 0], line[:, 1], color="cyan", lw=0.8)
    x0, x1, y0, y1 = grid.bounds
    ax_s.set_xlim(x1, x0)  # east to the left, as on the sky
    ax_s.set_ylim(y0, y1)
    ax_s.set_xlabel("x = offset in RA cos(Dec), east [arcsec]")
    ax_s.set_ylabel("y = offset in Dec, north [arcsec]")
    ax_s.set_title("blindlens / lenstronomy sky frame")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
