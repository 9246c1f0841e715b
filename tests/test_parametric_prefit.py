"""The Sérsic + shapelet lens pre-fit: profiles against lenstronomy and analytic forms, and mode finding."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from blindlens.lens_models import SIE, CompositeLens, ExternalShear
from blindlens.numpyro_model import sie_shear
from blindlens.observation import Observation
from blindlens.parametric_prefit import (
    SersicImager,
    SersicPrefitConfig,
    prefit_lens_with_sersic,
    sersic_ellipse,
    shapelets,
)

TRUE_LENS = dict(theta_E=0.9, e1=0.08, e2=-0.05, center_x=0.02, center_y=-0.03, gamma1=0.03, gamma2=-0.02)
TRUE_SOURCE = dict(R_sersic=0.18, n_sersic=1.5, e1=0.15, e2=0.05, center_x=0.06, center_y=-0.04)


def _lens(p):
    return CompositeLens((SIE(p["theta_E"], p["e1"], p["e2"], p["center_x"], p["center_y"]),
                          ExternalShear(p["gamma1"], p["gamma2"])))


def _psf(fwhm_pixels=2.0, size=9):
    r = np.arange(size) - size // 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / (fwhm_pixels / 2.3548) ** 2)
    return g / g.sum()


def test_sersic_matches_lenstronomy_sersic_ellipse(x64):
    light = pytest.importorskip("lenstronomy.LightModel.light_model")
    x, y = np.meshgrid(np.linspace(-1.3, 1.1, 23), np.linspace(-0.9, 1.4, 19))
    kw = dict(amp=2.5, R_sersic=0.3, n_sersic=2.7, e1=0.21, e2=-0.13, center_x=0.05, center_y=-0.1)
    ref = light.LightModel(["SERSIC_ELLIPSE"]).surface_brightness(x, y, [kw])
    ours = np.asarray(sersic_ellipse(jnp.asarray(x), jnp.asarray(y), **kw))
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12 * ref.max())


def test_shapelets_are_the_normalised_hermite_functions(x64):
    from math import factorial

    from scipy.special import eval_hermite

    x, y = np.meshgrid(np.linspace(-1.0, 1.2, 7), np.linspace(-0.8, 0.9, 5))
    beta, n_max = 0.3, 4
    ours = np.asarray(shapelets(jnp.asarray(x), jnp.asarray(y), n_max, beta, 0.1, -0.05))

    def phi(n, u):
        return eval_hermite(n, u) * np.exp(-u**2 / 2) / np.sqrt(2.0**n * np.sqrt(np.pi) * factorial(n))

    ref = [phi(n1, (x - 0.1) / beta) * phi(n - n1, (y + 0.05) / beta) / beta
           for n in range(n_max + 1) for n1 in range(n, -1, -1)]
    assert ours.shape == (15, *x.shape)
    np.testing.assert_allclose(ours, np.stack(ref), rtol=1e-10, atol=1e-12)
    # orthonormal in L2 (a fine grid integral)
    g = np.linspace(-3, 3, 601)
    gx, gy = np.meshgrid(g, g)
    basis = np.asarray(shapelets(jnp.asarray(gx), jnp.asarray(gy), n_max, beta)).reshape(15, -1)
    np.testing.assert_allclose(basis @ basis.T * (g[1] - g[0]) ** 2, np.eye(15), atol=1e-8)


def test_lensed_sersic_image_matches_lenstronomy(x64):
    pytest.importorskip("lenstronomy")
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    n, d, k = 40, 0.08, 3
    psf = _psf()
    corner = -(n - 1) / 2 * d
    data = ImageData(image_data=np.zeros((n, n)), ra_at_xy_0=corner, dec_at_xy_0=corner,
                     transform_pix2angle=np.array([[d, 0.0], [0.0, d]]))
    model = ImageModel(data, PSF(psf_type="PIXEL", kernel_point_source=psf), LensModel(["SIE", "SHEAR"]),
                       LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": k, "supersampling_convolution": False})
    p = TRUE_LENS
    kw_lens = [{k2: p[k2] for k2 in ("theta_E", "e1", "e2", "center_x", "center_y")},
               {"gamma1": p["gamma1"], "gamma2": p["gamma2"], "ra_0": 0.0, "dec_0": 0.0}]
    ref = model.image(kw_lens, [dict(amp=1.0, **TRUE_SOURCE)]) / d**2  # flux per pixel -> surface brightness
    obs = Observation(np.zeros((n, n)), np.ones((n, n)), psf, d)
    ours = np.asarray(SersicImager(obs, k)(_lens(p), 1.0, **TRUE_SOURCE))
    # lenstronomy convolves within the image (no light from outside it): compare away from the edge
    inner = (slice(6, -6), slice(6, -6))
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-6 * ref.max())


def _observation(noise=0.2, n=48, d=0.06, seed=0):
    obs = Observation(np.zeros((n, n)), np.full((n, n), noise), _psf(), d)
    clean = np.asarray(SersicImager(obs, 2)(_lens(TRUE_LENS), 1.0, **TRUE_SOURCE))
    image = clean + noise * np.random.default_rng(seed).normal(size=clean.shape)
    return Observation(image, np.full((n, n), noise), _psf(), d)


@pytest.fixture(scope="module")
def prefit():
    obs = _observation()
    config = SersicPrefitConfig(num_starts=8, num_steps=150, refine_runs=2, shapelet_order=2, refine_steps=50)
    return obs, prefit_lens_with_sersic(jr.key(3), sie_shear, obs, config)


def test_prefit_finds_the_lens_of_a_lensed_sersic_from_prior_draws(prefit):
    """Data made of a lensed Sérsic + noise: the best of 8 runs fits to the noise, at the true lens."""
    obs, found = prefit
    n = found.num_pixels
    assert found.chi2.shape == (8,) and np.all(np.diff(np.asarray(found.chi2)) >= 0)  # sorted, best first
    assert abs(float(found.chi2[0]) / n - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(float(found.lens["theta_E"]) - TRUE_LENS["theta_E"]) < 0.01
    for name in ("e1", "e2", "gamma1", "gamma2", "center_x", "center_y"):
        assert abs(float(found.lens[name]) - TRUE_LENS[name]) < 0.02, name


def test_prefit_without_optimisation_does_not_find_it(prefit):
    """The broken variant: prior draws ranked without any optimisation are far from the lens and the fit."""
    obs, found = prefit
    lazy = prefit_lens_with_sersic(jr.key(3), sie_shear, obs, SersicPrefitConfig(num_starts=8, num_steps=0))
    assert float(lazy.chi2[0]) > 3 * float(found.chi2[0])


def test_the_grid_placement_is_left_out_of_the_prefit(prefit):
    """A model with the sampled placement pre-fits exactly as the model without it (same key: same
    lenses and chi^2), its placement reported at 0; the wrapper above it is kept."""
    from blindlens.inference.numpyro_model import lens_site_names, without_nuisance
    from blindlens.inference.source_shift_model import with_source_shift
    from blindlens.lens_light_model import with_lens_light

    obs, found = prefit
    config = SersicPrefitConfig(num_starts=8, num_steps=150, refine_runs=2, shapelet_order=2, refine_steps=50)
    shifted = prefit_lens_with_sersic(jr.key(3), with_source_shift(sie_shear, 0.05), obs, config)
    np.testing.assert_array_equal(np.asarray(shifted.chi2), np.asarray(found.chi2))
    for name, v in found.runs.items():
        np.testing.assert_array_equal(np.asarray(shifted.runs[name]), np.asarray(v))
    assert np.all(np.asarray(shifted.runs["alpha_x"]) == 0) and float(shifted.lens["alpha_y"]) == 0
    lit = with_lens_light(with_source_shift(sie_shear, 0.05), amp_scale=1.0)
    stripped = without_nuisance(lit)
    assert "alpha_x" in lens_site_names(lit) and "alpha_x" not in lens_site_names(stripped)
    assert lens_site_names(stripped) == tuple(n for n in lens_site_names(lit) if n not in ("alpha_x", "alpha_y"))
    assert without_nuisance(sie_shear) is sie_shear and stripped.lens_model is sie_shear
    assert lit.lens_model is not sie_shear  # the original is not modified


def test_a_coarser_search_finds_the_lens_and_ranks_by_the_full_chi2(prefit):
    """The Sérsic stage at one ray per pixel finds the same lens; every run's chi^2 is that of its
    Sérsic at ``supersampling`` (2) rays, not at the search's 1 (that one, the broken variant, differs)."""
    obs, found = prefit
    config = SersicPrefitConfig(num_starts=8, num_steps=150, refine_runs=2, shapelet_order=2, refine_steps=50,
                                search_supersampling=1)
    coarse = prefit_lens_with_sersic(jr.key(3), sie_shear, obs, config)
    assert abs(float(coarse.chi2[0]) / coarse.num_pixels - 1.0) < 5 * np.sqrt(2.0 / coarse.num_pixels)
    for name in TRUE_LENS:
        assert abs(float(coarse.lens[name]) - TRUE_LENS[name]) < 0.02, name
    image, noise = np.asarray(obs.image), np.asarray(obs.noise)
    mismatched = 0
    for j in range(coarse.num_refined, 8):  # the unrefined runs: a Sérsic alone
        lens = _lens({n: coarse.runs[n][j] for n in TRUE_LENS})
        shape = {n: coarse.source[n][j] for n in ("amp", *TRUE_SOURCE)}
        full, search = (float(np.sum(((image - np.asarray(SersicImager(obs, k)(lens, **shape))) / noise) ** 2))
                        for k in (2, 1))
        np.testing.assert_allclose(float(coarse.chi2[j]), full, rtol=1e-4)
        mismatched += not np.isclose(float(coarse.chi2[j]), search, rtol=1e-4)
    assert mismatched >= 4


def test_prefit_config_is_checked():
    with pytest.raises(ValueError, match="num_starts >= 1"):
        SersicPrefitConfig(num_starts=0)
    with pytest.raises(ValueError, match="search_supersampling"):
        SersicPrefitConfig(search_supersampling=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        SersicPrefitConfig(shapelet_order=-1)
    with pytest.raises(ValueError, match="mass_light_offset"):
        SersicPrefitConfig(mass_light_offset=-0.1)


def test_linear_amplitudes_are_the_weighted_least_squares_solution(x64):
    """The amplitudes the pre-fit profiles out (deflector light and source) against numpy's solve."""
    from blindlens.inference.parametric_prefit import _linear_amplitudes

    rng = np.random.default_rng(0)
    design = rng.normal(size=(3, 12, 10))
    weight = rng.uniform(0.5, 2.0, size=(12, 10))
    image = np.tensordot([2.0, 0.5, 1.5], design, 1) + 0.1 * rng.normal(size=(12, 10))
    coef, chi2 = _linear_amplitudes(jnp.asarray(design), jnp.asarray(image), jnp.asarray(weight))
    a = design.reshape(3, -1).T * np.sqrt(weight.reshape(-1, 1))
    expected = np.linalg.lstsq(a, image.reshape(-1) * np.sqrt(weight.reshape(-1)), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(coef), expected, rtol=1e-5)  # the 1e-6 ridge
    resid = image - np.tensordot(expected, design, 1)
    assert float(chi2) == pytest.approx(np.sum(weight * resid**2), rel=1e-6)
    # a component the data want negative is clipped at zero (light cannot be negative), or kept if asked
    flipped = np.tensordot([2.0, -0.5, 1.5], design, 1)
    clipped = _linear_amplitudes(jnp.asarray(design), jnp.asarray(flipped), jnp.asarray(weight))[0]
    free = _linear_amplitudes(jnp.asarray(design), jnp.asarray(flipped), jnp.asarray(weight), nonnegative=False)[0]
    assert float(clipped[1]) == 0.0 and float(free[1]) == pytest.approx(-0.5, rel=1e-5)


def test_centre_tie_pulls_the_mass_centre_to_the_light_only_with_light():
    """The pre-fit's mass-light centre tie: its log density and start, and no tie without free light centres."""
    from blindlens.inference.lens_light_model import with_lens_light
    from blindlens.inference.lens_space import LensSpace
    from blindlens.inference.parametric_prefit import _centre_tie

    space = LensSpace(with_lens_light(sie_shear, amp_scale=100.0))
    values = space.complete({**TRUE_LENS, "lens_light_amp": 1.0, "lens_light_R_sersic": 0.5,
                             "lens_light_n_sersic": 3.0, "lens_light_e1": 0.0, "lens_light_e2": 0.0,
                             "lens_light_center_x": 0.05, "lens_light_center_y": 0.01})
    u = space.unconstrain(values)
    tie = _centre_tie(space, 0.05)
    expected = -0.5 * ((0.02 - 0.05) ** 2 + (-0.03 - 0.01) ** 2) / 0.05**2
    assert float(tie.log_density(u)) == pytest.approx(expected, rel=1e-4)
    moved = space.constrain(tie.start(u))
    assert float(moved["center_x"]) == pytest.approx(0.05, abs=1e-6)
    assert float(moved["center_y"]) == pytest.approx(0.01, abs=1e-6)
    assert float(moved["theta_E"]) == pytest.approx(TRUE_LENS["theta_E"], abs=1e-6)
    for off in (_centre_tie(space, 0.0), _centre_tie(LensSpace(sie_shear), 0.05),
                _centre_tie(LensSpace(with_lens_light(sie_shear, amp_scale=100.0, tie_center=True)), 0.05)):
        assert off.sd == 0.0


def test_held_starts_keep_the_mass_centre_on_the_light_and_free_ones_do_not():
    """``tied_fraction``: that share of the starts fit the Sérsic stage with the mass centre on the
    light's (exactly); the others move it (the weak tie does not hold it); all ranked by chi^2."""
    from blindlens.inference.lens_light_model import amp_scale_of, with_lens_light

    base = _observation()
    n, d = base.image.shape[0], 0.06
    c = (np.arange(n) - (n - 1) / 2) * d
    x, y = np.meshgrid(c, c)
    light = np.asarray(sersic_ellipse(jnp.asarray(x), jnp.asarray(y), amp=4.0, R_sersic=0.3, n_sersic=2.0, e1=0.05,
                                      e2=0.0, center_x=TRUE_LENS["center_x"], center_y=TRUE_LENS["center_y"]))
    obs = Observation(np.asarray(base.image) + light, np.asarray(base.noise), _psf(), d)
    model = with_lens_light(sie_shear, amp_scale=amp_scale_of(obs))
    found = prefit_lens_with_sersic(jr.key(3), model, obs,
                                    SersicPrefitConfig(num_starts=4, num_steps=30, refine_runs=0, tied_fraction=0.5))
    runs = {k: np.asarray(v) for k, v in found.runs.items()}
    offset = np.hypot(runs["center_x"] - runs["lens_light_center_x"], runs["center_y"] - runs["lens_light_center_y"])
    assert np.sum(offset < 1e-6) == 2 and np.sum(offset > 1e-4) == 2, offset
    assert np.all(np.diff(np.asarray(found.chi2)) >= 0)
    with pytest.raises(ValueError, match="tied_fraction"):
        SersicPrefitConfig(tied_fraction=1.5)


def test_light_amplitudes_are_written_back_only_inside_the_prior():
    """The runs carry the fitted light amplitude, unless it falls outside its prior's support."""
    from blindlens.inference.lens_light_model import with_lens_light
    from blindlens.inference.lens_space import LensSpace
    from blindlens.inference.parametric_prefit import _with_light_amplitudes

    space = LensSpace(with_lens_light(sie_shear, amp_scale=100.0))  # amp ~ LogUniform(1e-3, 1e3)
    u = space.unconstrain(space.prior_draw(jr.key(1)))
    own = float(space.constrain(u)["lens_light_amp"])
    assert float(_with_light_amplitudes(space, u, jnp.array([7.5]))["lens_light_amp"]) == pytest.approx(7.5, rel=1e-5)
    for outside in (0.0, 5e3):
        assert float(_with_light_amplitudes(space, u, jnp.array([outside]))["lens_light_amp"]) == pytest.approx(own)


def test_robust_amplitudes_ignore_outliers_and_reduce_to_least_squares(x64):
    """The Cauchy stage's amplitudes: with a few pixels far off (knots the Sérsic cannot draw) they
    stay at the truth where least squares is pulled away; with a scale far above the residuals the
    loss is the chi^2 and the amplitudes the least-squares ones; the loss never exceeds the chi^2."""
    from blindlens.inference.parametric_prefit import _linear_amplitudes, _robust_amplitudes

    rng = np.random.default_rng(1)
    design = rng.uniform(0.0, 1.0, size=(2, 20, 20))
    weight = np.ones((20, 20))
    image = np.tensordot([2.0, 0.5], design, 1) + rng.normal(size=(20, 20))
    spiked = image.copy()
    spiked[rng.integers(0, 20, 12), rng.integers(0, 20, 12)] += 60.0  # 3% of the pixels, 60 sigma
    args = (jnp.asarray(design), jnp.asarray(spiked), jnp.asarray(weight))
    lsq, chi2 = _linear_amplitudes(*args)
    robust, loss = _robust_amplitudes(*args, scale=3.0)
    clean = np.asarray(_linear_amplitudes(jnp.asarray(design), jnp.asarray(image), jnp.asarray(weight))[0])
    assert np.max(np.abs(np.asarray(robust) - clean)) < 0.05  # the spikes cost the robust fit nothing
    assert np.max(np.abs(np.asarray(lsq) - clean)) > 0.5  # ... and pull least squares far off
    assert float(loss) < float(chi2)
    wide, wide_loss = _robust_amplitudes(jnp.asarray(design), jnp.asarray(image), jnp.asarray(weight), scale=1e4)
    np.testing.assert_allclose(np.asarray(wide), clean, rtol=1e-6)
    assert float(wide_loss) == pytest.approx(float(_linear_amplitudes(jnp.asarray(design), jnp.asarray(image),
                                                                      jnp.asarray(weight))[1]), rel=1e-6)
    with pytest.raises(ValueError, match="robust_scale"):
        SersicPrefitConfig(robust_scale=-1.0)


def test_cauchy_starts_find_the_lens_of_a_knotty_source_where_the_chi2_does_not():
    """A faint Sérsic with twenty bright compact knots over 1.2" (the clumpy source of the cold-start
    study's system 19, in miniature): under the chi^2 alone the best run's lens centre goes 0.8"
    off to draw knots (the broken variant, ``robust_fraction=0``); with the default half of the
    starts on the Cauchy loss the best run is at the true lens's centre and Einstein radius."""
    n, d, noise = 64, 0.06, 0.2
    imager = SersicImager(Observation(np.zeros((n, n)), np.full((n, n), noise), _psf(), d), 2)
    lens = _lens(TRUE_LENS)
    clean = np.array(imager(lens, 1.0, **TRUE_SOURCE))
    rng = np.random.default_rng(5)
    for _ in range(20):
        r, phi = rng.uniform(0.3, 1.2), rng.uniform(0, 2 * np.pi)
        clean += np.asarray(imager(lens, 12.0, 0.04, 1.0, 0.0, 0.0, r * np.cos(phi), r * np.sin(phi)))
    obs = Observation(clean + noise * rng.normal(size=clean.shape), np.full((n, n), noise), _psf(), d)

    def centre_and_radius_error(fraction):
        found = prefit_lens_with_sersic(jr.key(3), sie_shear, obs, SersicPrefitConfig(
            num_starts=8, num_steps=150, refine_runs=2, shapelet_order=2, refine_steps=50, robust_fraction=fraction))
        lens_found = {k: float(v) for k, v in found.lens.items()}
        return (np.hypot(lens_found["center_x"] - TRUE_LENS["center_x"], lens_found["center_y"] - TRUE_LENS["center_y"]),
                abs(lens_found["theta_E"] - TRUE_LENS["theta_E"]))

    assert SersicPrefitConfig().robust_fraction == 0.5
    offset, radius = centre_and_radius_error(0.5)
    assert offset < 0.1 and radius < 0.05, (offset, radius)
    offset_chi2, _ = centre_and_radius_error(0.0)
    assert offset_chi2 > 0.3, offset_chi2


def test_the_two_groups_are_spread_and_refined_in_turn():
    """``robust_fraction`` of the starts, spread evenly (run 0, the ``init_lens`` run, on the chi^2);
    the refinement order takes each group's best by its own loss, in turn."""
    from blindlens.inference.parametric_prefit import _interleaved_order, _spread_flags

    flags = np.asarray(_spread_flags(8, 0.5))
    np.testing.assert_array_equal(flags, [False, True] * 4)
    assert int(np.sum(_spread_flags(48, 0.5))) == 24 and not np.any(_spread_flags(5, 0.0))
    assert np.all(_spread_flags(4, 1.0)) and int(np.sum(_spread_flags(7, 0.5))) == 3
    for n, f in ((48, 0.5), (7, 0.5), (5, 0.4), (3, 0.999), (10, 0.3)):  # the count the CLI prints
        assert int(np.sum(_spread_flags(n, f))) == SersicPrefitConfig(num_starts=n, robust_fraction=f).num_robust
    # chi^2 group (0, 2, 4, 6) with losses 5, 3, 4, 0; Cauchy group (1, 3, 5, 7) with 1, 2, 9, 7 (not comparable)
    order = np.asarray(_interleaved_order(jnp.array([5.0, 1, 3, 2, 4, 9, 0, 7]), jnp.asarray(flags)))
    np.testing.assert_array_equal(order, [6, 1, 2, 3, 4, 7, 0, 5])
    # one group only: the plain ranking
    np.testing.assert_array_equal(np.asarray(_interleaved_order(jnp.array([3.0, 1, 2]), jnp.zeros(3, bool))), [1, 2, 0])
