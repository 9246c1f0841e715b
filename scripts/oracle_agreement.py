"""Agreement of blindlens lensed images with lenstronomy (the oracle), printed as a markdown table.

lenstronomy's ``ImageModel`` with an ``INTERPOL`` source returns flux per pixel (surface
brightness x pixel area), so its image is divided by the pixel area before comparing. Cases:
perf-anchors section 2 lens and source; 96 x 96 at 0.05" and 192 x 192 at 0.025"; no PSF or a
Gaussian PSF of FWHM 0.1"; supersampling 1 and 2; float32 and float64. Run::

    .venv/bin/python scripts/oracle_agreement.py
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from forward import NAMES, SOURCE_N, SOURCE_SCALE, TRUTH, make_source  # noqa: E402


def lenstronomy_image(n_pix, src, fwhm, supersampling):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    from blindlens.psf import gaussian_psf

    d = 4.8 / n_pix
    data = ImageData(image_data=np.zeros((n_pix, n_pix)), transform_pix2angle=np.diag([d, d]),
                     ra_at_xy_0=-(n_pix - 1) / 2 * d, dec_at_xy_0=-(n_pix - 1) / 2 * d)
    psf = PSF(psf_type="PIXEL", kernel_point_source=gaussian_psf(fwhm, d)) if fwhm else PSF(psf_type="NONE")
    model = ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"]),
                       source_model_class=LightModel(["INTERPOL"]),
                       kwargs_numerics={"supersampling_factor": supersampling, "supersampling_convolution": False})
    kw_lens = [dict(zip(NAMES[:5], TRUTH[:5])), dict(gamma1=TRUTH[5], gamma2=TRUTH[6], ra_0=0.0, dec_0=0.0)]
    kw_src = [dict(image=src, amp=1.0, center_x=0.0, center_y=0.0, phi_G=0.0, scale=SOURCE_SCALE)]
    return model.image(kwargs_lens=kw_lens, kwargs_source=kw_src) / d**2


def blindlens_image(n_pix, src, fwhm, supersampling):
    import jax.numpy as jnp

    from blindlens.grid import PixelGrid
    from blindlens.lens_models import SIE, ExternalShear
    from blindlens.lensing_operator import lensed_image
    from blindlens.psf import gaussian_psf

    d = 4.8 / n_pix
    p = dict(zip(NAMES, TRUTH))
    lens = SIE(theta_E=p["theta_E"], e1=p["e1"], e2=p["e2"], center_x=p["center_x"], center_y=p["center_y"]) + \
        ExternalShear(gamma1=p["gamma1"], gamma2=p["gamma2"])
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    out = lensed_image(lens, jnp.asarray(src, dtype), PixelGrid((n_pix, n_pix), d),
                       PixelGrid((SOURCE_N, SOURCE_N), SOURCE_SCALE),
                       psf=gaussian_psf(fwhm, d) if fwhm else None, supersampling=supersampling)
    return np.asarray(out, np.float64)


def main():
    src = make_source()
    rows = []
    for precision in ("float32", "float64"):
        jax.config.update("jax_enable_x64", precision == "float64")
        for n_pix in (96, 192):
            for fwhm in (None, 0.1):
                for k in (1, 2):
                    ref = lenstronomy_image(n_pix, src, fwhm, k)
                    out = blindlens_image(n_pix, src, fwhm, k)
                    err = np.abs(out - ref)
                    rows.append((precision, n_pix, "none" if fwhm is None else f'{fwhm}"', k,
                                 err.max() / ref.max(), np.sqrt(np.mean(err**2)) / ref.max(), out.sum() / ref.sum()))
    print("| precision | image | PSF FWHM | supersampling | max abs diff / peak | rms diff / peak | flux ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]}x{r[1]} | {r[2]} | {r[3]} | {r[4]:.1e} | {r[5]:.1e} | {r[6]:.7f} |")


if __name__ == "__main__":
    main()
