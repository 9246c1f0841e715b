"""Deflector light: Sérsic images against lenstronomy, the joint model with light, the pre-fit with light."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from blindlens.grid import PixelGrid
from blindlens.lens_light_model import amp_scale_of, lens_light_site_names, with_lens_light
from blindlens.lens_models import SIE, ExternalShear
from blindlens.light_profiles import LensLight, LensLightImager, LensWithLight, SersicEllipse, light_of
from blindlens.numpyro_model import joint_model, lens_from_values, lens_site_names, sie_shear
from blindlens.observation import Observation
from blindlens.parametric_prefit import SersicImager, SersicPrefitConfig, prefit_lens_with_sersic
from blindlens.psf import PSF

LIGHT = dict(amp=4.0, R_sersic=0.5, n_sersic=3.0, e1=0.1, e2=-0.05, center_x=0.03, center_y=-0.02)
TRUE_LENS = dict(theta_E=0.9, e1=0.08, e2=-0.05, center_x=0.02, center_y=-0.03, gamma1=0.03, gamma2=-0.02)
TRUE_SOURCE = dict(R_sersic=0.18, n_sersic=1.5, e1=0.15, e2=0.05, center_x=0.06, center_y=-0.04)


def _psf(fwhm_pixels=2.0, size=9):
    r = np.arange(size) - size // 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / (fwhm_pixels / 2.3548) ** 2)
    return g / g.sum()


def _mass(p=TRUE_LENS):
    return SIE(p["theta_E"], p["e1"], p["e2"], p["center_x"], p["center_y"]) + ExternalShear(p["gamma1"], p["gamma2"])


def _lenstronomy_light(n, d, k, psf, kwargs_list, profiles=("SERSIC_ELLIPSE",)):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF as LPSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LightModel.light_model import LightModel

    corner = -(n - 1) / 2 * d
    data = ImageData(image_data=np.zeros((n, n)), ra_at_xy_0=corner, dec_at_xy_0=corner,
                     transform_pix2angle=np.array([[d, 0.0], [0.0, d]]))
    model = ImageModel(data, LPSF(psf_type="PIXEL", kernel_point_source=psf),
                       lens_light_model_class=LightModel(list(profiles)),
                       kwargs_numerics={"supersampling_factor": k, "supersampling_convolution": False})
    return np.asarray(model.lens_surface_brightness(kwargs_list))


def test_lens_light_image_matches_lenstronomy(x64):
    """Two Sérsic components, PSF, supersampling 3: lenstronomy's lens-light image to 1e-6 of its peak."""
    pytest.importorskip("lenstronomy")
    n, d, k = 40, 0.08, 3
    psf = _psf()
    second = dict(amp=0.5, R_sersic=1.2, n_sersic=1.0, e1=-0.2, e2=0.1, center_x=0.0, center_y=0.05)
    ref = _lenstronomy_light(n, d, k, psf, [LIGHT, second], ("SERSIC_ELLIPSE", "SERSIC_ELLIPSE"))
    imager = LensLightImager(PixelGrid((n, n), d), PSF(psf, (n, n)), k, core_supersampling=None)  # the plain average
    ours = np.asarray(imager(SersicEllipse(**LIGHT) + SersicEllipse(**second)))
    # lenstronomy convolves within the image (no light from outside it): compare away from the edge
    inner = (slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(ours[inner], ref[inner], rtol=0, atol=1e-6 * ref.max())
    # the broken variants: the light per arcsec^2 instead of per pixel, or e1 and e2 swapped
    assert np.max(np.abs(ours[inner] / d**2 - ref[inner])) > 0.1 * ref.max()
    swapped = np.asarray(imager(SersicEllipse(**{**LIGHT, "e1": LIGHT["e2"], "e2": LIGHT["e1"]}) + SersicEllipse(**second)))
    assert np.max(np.abs(swapped[inner] - ref[inner])) > 1e-3 * ref.max()


CUSPY = dict(amp=4.0, R_sersic=0.5, n_sersic=4.0, e1=0.1, e2=-0.05)


@pytest.mark.parametrize("rotated", [False, True])
def test_the_refined_core_integrates_a_cuspy_sersic_where_a_plain_average_cannot(rotated, x64):
    """The pixels around a Sérsic n = 4 core against the brute-force pixel integral (48^2 sub-pixels in every
    pixel): the default imager (2^2 sub-pixels, its core box refined) is within 0.2% of the peak, the plain
    2 x 2 average is off by 2.4-8%; the box follows the centre (also in a rotated, east-left frame)."""
    n, d = 33, 0.05  # odd: (0, 0) is a pixel centre
    angle = np.deg2rad(25.0)
    pix2angle = (((-d * np.cos(angle), d * np.sin(angle)), (d * np.sin(angle), d * np.cos(angle)))
                 if rotated else None)
    grid = PixelGrid((n, n), d, pix2angle=pix2angle)
    exact = LensLightImager(grid, None, 48, core_supersampling=None)
    refined = LensLightImager(grid, None, 2)
    plain = LensLightImager(grid, None, 2, core_supersampling=None)
    assert refined.core_supersampling > 2 and refined.core_size >= 5
    call = jax.jit(lambda imager, light: imager(light))
    for cx, cy in ((0.0, 0.0), (0.013, -0.021), (-0.31, 0.22)):  # on a pixel centre, off it, far from the centre
        light = SersicEllipse(**CUSPY, center_x=cx, center_y=cy)
        ref = np.asarray(exact(light))
        err_refined = np.max(np.abs(np.asarray(call(refined, light)) - ref)) / ref.max()
        err_plain = np.max(np.abs(np.asarray(plain(light)) - ref)) / ref.max()
        assert err_refined < 2e-3, (cx, cy, err_refined)  # measured 2e-4 - 1e-3
        assert err_plain > 1.5e-2, (cx, cy, err_plain)  # measured 0.024 - 0.081
        # the box is centred on the pixel nearest the centre
        _, (row0, col0) = refined._core(light)
        xs, ys = grid.pixel_to_angle(*np.meshgrid(np.arange(n), np.arange(n), indexing="xy"))
        j, i = np.unravel_index(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2), (n, n))
        m = refined.core_size
        assert (int(row0), int(col0)) == (j - m // 2, i - m // 2)


def test_the_refined_core_is_differentiable_and_clamped_at_the_edge():
    grid = PixelGrid((24, 24), 0.05)
    imager = LensLightImager(grid, PSF(_psf(), (24, 24)), 2)

    def flux(amp, cx):
        return jnp.sum(imager(SersicEllipse(**{**CUSPY, "amp": amp}, center_x=cx, center_y=0.0)))

    g = jax.grad(flux, argnums=(0, 1))(4.0, 0.011)
    assert all(bool(jnp.isfinite(v)) for v in g) and float(g[0]) > 0
    # a centre beyond the corner: the box stays inside the (padded) grid and the image stays finite
    corner = imager(SersicEllipse(**CUSPY, center_x=5.0, center_y=-5.0))
    assert bool(jnp.all(jnp.isfinite(corner)))
    with pytest.raises(ValueError, match="core_size"):
        LensLightImager(grid, None, 2, core_size=4)


def test_lens_with_light_deflects_like_its_mass():
    mass = _mass()
    lens = LensWithLight(mass, SersicEllipse(**LIGHT))
    x, y = jnp.linspace(-1, 1, 7), jnp.linspace(0.5, -0.7, 7)
    np.testing.assert_array_equal(np.asarray(lens.ray_shoot(x, y)), np.asarray(mass.ray_shoot(x, y)))
    np.testing.assert_array_equal(np.asarray(lens.hessian(x, y)), np.asarray(mass.hessian(x, y)))
    assert isinstance(lens.light, LensLight) and light_of(mass) is None
    with pytest.raises(ValueError, match="already carries light"):
        LensWithLight(lens, SersicEllipse(**LIGHT))


def _observation(n=48, d=0.06, noise=0.005, seed=0, light=True):
    obs = Observation(np.zeros((n, n)), np.full((n, n), noise), _psf(), d)
    arcs = np.asarray(SersicImager(obs, 2)(_mass(), 0.012, **TRUE_SOURCE))  # peak ~0.08: SNR ~16
    clean = arcs
    if light:  # the deflector several times brighter than the arcs at their peak
        clean = arcs + np.asarray(LensLightImager(obs.image_grid, obs.psf_operator(), 2)(SersicEllipse(**LIGHT)))
    image = clean + noise * np.random.default_rng(seed).normal(size=clean.shape)
    return Observation(image, np.full((n, n), noise), _psf(), d), arcs, clean


def test_with_lens_light_sites_and_tied_centre():
    obs, _, _ = _observation()
    model = with_lens_light(sie_shear, amp_scale=amp_scale_of(obs))
    names = lens_site_names(model)
    assert names[:7] == ("theta_E", "e1", "e2", "center_x", "center_y", "gamma1", "gamma2")
    assert names[7:] == lens_light_site_names() == tuple("lens_light_" + n for n in LIGHT)
    tied = with_lens_light(sie_shear, amp_scale=1.0, tie_center=True, num_components=2)
    assert "lens_light_center_x" not in lens_site_names(tied) and "lens_light2_amp" in lens_site_names(tied)
    values = {n: jnp.asarray(0.5) for n in lens_site_names(tied)}
    lens = lens_from_values(tied, {**values, "center_x": jnp.asarray(0.11), "center_y": jnp.asarray(-0.07)})
    for comp in lens.light.components:
        assert float(comp.center_x) == pytest.approx(0.11) and float(comp.center_y) == pytest.approx(-0.07)
    with pytest.raises(ValueError, match="amp_scale"):
        with_lens_light(sie_shear)
    with pytest.raises(ValueError, match="unknown lens-light parameter"):
        with_lens_light(sie_shear, amp_scale=1.0, priors={"Rsersic": None})


def test_joint_model_adds_the_light_and_the_source_step_sees_the_rest():
    obs, _, _ = _observation()
    model = with_lens_light(sie_shear, amp_scale=amp_scale_of(obs))
    mask = np.ones(obs.shape, bool)
    mask[:3] = False
    obs = Observation(obs.image, obs.noise, obs.psf, obs.pixel_scale, mask=mask)
    jm = joint_model(model, obs, PixelGrid((16, 16), 0.1), supersampling=2)
    values = {**TRUE_LENS, **{"lens_light_" + n: v for n, v in LIGHT.items()}}
    lens = lens_from_values(model, {n: jnp.asarray(v) for n, v in values.items()})
    source = jnp.asarray(np.random.default_rng(1).uniform(size=(16, 16)), jnp.float32)
    light = np.asarray(LensLightImager(obs.image_grid, obs.psf_operator(), 2)(SersicEllipse(**LIGHT)))
    np.testing.assert_allclose(np.asarray(jm.predict(lens, source)),
                               np.asarray(jm.operator(lens, masked=False)(source)) + light, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jm.source_data(lens)), np.where(mask, obs.image - light, 0.0), rtol=1e-6, atol=1e-6)
    # a mass-only lens: exactly the old model image and data
    mass_jm = joint_model(sie_shear, obs, PixelGrid((16, 16), 0.1), supersampling=2)
    mass = lens_from_values(sie_shear, {n: jnp.asarray(TRUE_LENS[n]) for n in TRUE_LENS})
    np.testing.assert_array_equal(np.asarray(mass_jm.predict(mass, source)),
                                  np.asarray(mass_jm.operator(mass, masked=False)(source)))
    np.testing.assert_array_equal(np.asarray(mass_jm.source_data(mass)), np.asarray(mass_jm.masked_image))
    r = np.where(mask, (obs.image - np.asarray(jm.predict(lens, source))) / obs.noise, 0.0)
    const = -np.sum(mask * (np.log(obs.noise) + 0.5 * np.log(2 * np.pi)))
    assert float(jm.log_likelihood(lens, source)) == pytest.approx(-0.5 * np.sum(r**2) + const, rel=1e-5)


@pytest.fixture(scope="module")
def light_prefit():
    obs, arcs, clean = _observation()
    model = with_lens_light(sie_shear, amp_scale=amp_scale_of(obs))
    config = SersicPrefitConfig(num_starts=8, num_steps=200, refine_runs=2, shapelet_order=2, refine_steps=50)
    return obs, arcs, clean, prefit_lens_with_sersic(jr.key(3), model, obs, config)


def test_prefit_with_lens_light_finds_lens_and_light(light_prefit):
    """Arcs under a deflector several times brighter: the pre-fit with a light model recovers both."""
    obs, arcs, clean, found = light_prefit
    assert (clean - arcs).max() > 3 * arcs.max()
    n = found.num_pixels
    assert abs(float(found.chi2[0]) / n - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(float(found.lens["theta_E"]) - TRUE_LENS["theta_E"]) < 0.01
    # the light's image (R_sersic, n_sersic and amp are degenerate within a 3" field: compare the image;
    # the pre-fit finds the basin, NUTS refines the light: measured 6% of the peak in the outskirts)
    imager = LensLightImager(obs.image_grid, obs.psf_operator(), 2)
    fitted = np.asarray(imager(SersicEllipse(**{n: found.lens["lens_light_" + n] for n in LIGHT})))
    truth = clean - arcs
    assert np.max(np.abs(fitted - truth)) < 0.1 * truth.max()
    for name in ("e1", "e2", "center_x", "center_y"):
        assert abs(float(found.lens["lens_light_" + name]) - LIGHT[name]) < 0.03, name


def test_prefit_without_lens_light_cannot_fit_it(light_prefit):
    """The broken variant: the same data with a mass-only model leaves the deflector in the residuals."""
    obs, _, _, with_light = light_prefit
    config = SersicPrefitConfig(num_starts=8, num_steps=200, refine_runs=2, shapelet_order=2, refine_steps=50)
    found = prefit_lens_with_sersic(jr.key(3), sie_shear, obs, config)
    assert float(found.chi2[0]) > 3 * float(with_light.chi2[0])
