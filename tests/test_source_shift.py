"""The source grid's placement as a lens parameter (``blindlens.source_shift_model``, ``--source-shift``).

A constant deflection ``alpha`` must be exactly the source grid moved by ``+alpha`` (the claim the
marginalisation rests on), its sites must carry a uniform prior over two source pixels, and the
pipeline must add it where asked and nowhere else.
"""

import pickle

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from blindlens.lens_models import SIE, ExternalShear, Shift
from blindlens.lensing_operator import LensingOperator
from blindlens.psf import gaussian_psf
from numpyro.infer.util import log_density

from blindlens.inference.numpyro_model import (
    lens_from_values,
    lens_site_names,
    nuisance_site_names,
    sie_shear,
)
from blindlens.inference.source_shift_model import SOURCE_SHIFT_SITES, with_source_shift
from blindlens.physics.grid import PixelGrid
from blindlens.pipeline import (
    AUTO_SOURCE_SHIFT,
    SampleOptions,
    run_lens_model,
    sample_fingerprint,
    source_shift,
)


def _source(shape, seed=3):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = np.exp(-((xx - 12.3) ** 2 / 18.0 + (yy - 14.1) ** 2 / 9.0))
    return jnp.asarray(blob + 0.2 * rng.random(shape))


def test_a_constant_deflection_is_the_source_grid_moved_by_it(x64):
    image_grid = PixelGrid((40, 40), 0.05)
    lens = SIE(theta_E=0.7, e1=0.1, e2=-0.05, center_x=0.01, center_y=-0.02) + ExternalShear(gamma1=0.02, gamma2=0.01)
    psf = gaussian_psf(0.1, 0.05)
    source = _source((32, 32))
    centre, alpha = (0.03, -0.04), (0.0137, -0.0211)
    shifted = LensingOperator(lens + Shift(*alpha), image_grid, PixelGrid((32, 32), 0.05, centre), psf=psf,
                              supersampling=2)(source)
    moved = LensingOperator(lens, image_grid, PixelGrid((32, 32), 0.05, (centre[0] + alpha[0], centre[1] + alpha[1])),
                            psf=psf, supersampling=2)(source)
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(moved), rtol=0, atol=1e-12)
    # and it is not a no-op: the fixed grid gives another image (by far more than round-off)
    fixed = LensingOperator(lens, image_grid, PixelGrid((32, 32), 0.05, centre), psf=psf, supersampling=2)(source)
    assert np.max(np.abs(np.asarray(fixed) - np.asarray(shifted))) > 1e-3


@pytest.mark.filterwarnings("ignore:Out-of-support values")
def test_with_source_shift_adds_uniform_sites_over_two_pixels():
    model = with_source_shift(sie_shear, 0.05)
    assert lens_site_names(model) == (*lens_site_names(sie_shear), *SOURCE_SHIFT_SITES)
    values = {n: 0.0 for n in lens_site_names(sie_shear)} | {"theta_E": 1.0, "alpha_x": 0.01, "alpha_y": -0.02}
    lens = lens_from_values(model, values)
    dx, dy = lens.deflection(jnp.asarray(0.5), jnp.asarray(0.3))
    bx, by = lens_from_values(sie_shear, {k: v for k, v in values.items() if k not in SOURCE_SHIFT_SITES}).deflection(
        jnp.asarray(0.5), jnp.asarray(0.3))
    np.testing.assert_allclose([float(dx - bx), float(dy - by)], [0.01, -0.02], atol=1e-7)

    def log_prior(ax, ay):
        return log_density(model, (), {}, values | {"alpha_x": ax, "alpha_y": ay})[0] - log_density(
            sie_shear, (), {}, {k: v for k, v in values.items() if k not in SOURCE_SHIFT_SITES})[0]

    # U(-0.05, 0.05) each (two pixels): log density -2 log(0.1) inside, -inf outside
    np.testing.assert_allclose(float(log_prior(0.049, -0.049)), -2 * np.log(0.1), rtol=1e-5)
    np.testing.assert_allclose(float(log_prior(0.0, 0.03)), -2 * np.log(0.1), rtol=1e-5)
    assert not np.isfinite(float(log_prior(0.051, 0.0)))
    pickle.loads(pickle.dumps(model))  # kernels holding it pickle (chain_method="parallel")


def test_with_source_shift_refuses_bad_input():
    with pytest.raises(ValueError, match="positive source pixel scale"):
        with_source_shift(sie_shear, 0.0)

    def clashing():
        numpyro.sample("alpha_x", dist.Normal(0.0, 1.0))
        return SIE(theta_E=1.0, e1=0.0, e2=0.0)

    with pytest.raises(ValueError, match="already has site"):
        with_source_shift(clashing, 0.05)

    def not_a_lens():
        numpyro.sample("theta_E", dist.Uniform(0.5, 1.5))
        return 1.0

    with pytest.raises(ValueError, match="returning a mass lens"):
        lens_site_names(with_source_shift(not_a_lens, 0.05))


def test_run_lens_model_adds_the_shift_only_when_asked():
    class Prior:
        pixel_scale = 0.05

    plain = lens_site_names(sie_shear)
    assert lens_site_names(run_lens_model(sie_shear, SampleOptions(source_shift="none"), None, Prior())) == plain
    shifted = run_lens_model(sie_shear, SampleOptions(source_shift="sampled"), None, Prior())
    assert lens_site_names(shifted) == (*plain, *SOURCE_SHIFT_SITES)
    auto = lens_site_names(run_lens_model(sie_shear, SampleOptions(), None, Prior()))
    assert SampleOptions().source_shift == "auto"
    assert auto == (lens_site_names(shifted) if AUTO_SOURCE_SHIFT == "sampled" else plain)
    with pytest.raises(ValueError, match="--source-shift must be one of"):
        SampleOptions(source_shift="yes").validate()


def test_the_checkpoint_records_what_auto_resolved_to(tmp_path):
    """A checkpoint fingerprints the placement that ran: auto and its meaning resume each other,
    the other setting does not."""
    class Prior:
        pixel_scale = 0.05
        shape = (8, 8)

    obs = tmp_path / "obs.npz"
    obs.write_bytes(b"not read: only hashed")
    other = "none" if AUTO_SOURCE_SHIFT == "sampled" else "sampled"

    prior = Prior()

    def fingerprint(**kw):
        return sample_fingerprint(str(obs), SampleOptions(**kw), prior)

    assert source_shift(SampleOptions()) == AUTO_SOURCE_SHIFT in ("none", "sampled")
    assert source_shift(SampleOptions(source_shift=other)) == other
    assert fingerprint() == fingerprint(source_shift=AUTO_SOURCE_SHIFT)
    assert fingerprint()["source_shift"] == AUTO_SOURCE_SHIFT
    assert fingerprint(source_shift=other)["source_shift"] == other


def test_cli_refuses_a_sampled_placement_with_a_fixed_lens(tmp_path, capsys):
    from blindlens import cli

    (tmp_path / "lens.toml").write_text("")
    code = cli.main(["sample", str(tmp_path / "obs.npz"), "--out", str(tmp_path / "post.nc"), "--fixed-lens",
                     str(tmp_path / "lens.toml"), "--source-shift", "sampled"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--source-shift samples the grid's placement" in err, err


def test_the_placement_is_declared_a_nuisance_through_every_wrapper():
    from blindlens.inference.chain_runner import _default_sites
    from blindlens.inference.lens_light_model import with_lens_light

    shifted = with_source_shift(sie_shear, 0.05)
    assert nuisance_site_names(sie_shear) == ()
    assert nuisance_site_names(shifted) == SOURCE_SHIFT_SITES
    lit = with_lens_light(shifted, amp_scale=1.0)
    assert nuisance_site_names(lit) == SOURCE_SHIFT_SITES and set(SOURCE_SHIFT_SITES) <= set(lens_site_names(lit))

    class Kernel:  # what run_chains reads of a BlindLensGibbs: joint_model.lens_model
        class joint_model:
            lens_model = lit

    samples = {name: None for name in (*lens_site_names(lit), "source")}
    monitored = _default_sites(Kernel, samples)
    assert "theta_E" in monitored and not set(SOURCE_SHIFT_SITES) & set(monitored)


def test_translate_source_moves_by_the_shift_conserves_flux_and_inverts_exactly(x64):
    from blindlens.inference.source_shift_model import translate_source

    yy, xx = np.mgrid[:32, :32].astype(float)

    def blob(cy, cx):
        return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.5**2))

    s = jnp.asarray(blob(14.0, 17.0))
    moved = translate_source(s, jnp.asarray([0.3, -0.7]))  # s'(q) = s(q + d): the blob moves by -d
    np.testing.assert_allclose(np.asarray(moved), blob(13.7, 17.7), atol=1e-6)
    assert abs(float(moved.sum()) - float(s.sum())) < 1e-10
    back = translate_source(translate_source(jnp.asarray(_source((32, 32))), jnp.asarray([0.41, 0.13])),
                            jnp.asarray([-0.41, -0.13]))
    np.testing.assert_allclose(np.asarray(back), np.asarray(_source((32, 32))), atol=1e-12)


def test_chains_sharing_a_start_get_their_own_placement_and_still_image_the_same_galaxy(x64):
    from blindlens.inference.source_shift_model import (
        spread_shared_placements,
        translate_source,
    )

    p = 0.05
    image_grid, source_grid = PixelGrid((48, 48), 0.05), PixelGrid((32, 32), p)
    psf = gaussian_psf(0.1, 0.05)
    yy, xx = np.mgrid[:32, :32].astype(float)
    galaxy = np.exp(-((xx - 15.2) ** 2 / 24.0 + (yy - 16.4) ** 2 / 14.0))  # smooth: bilinear is good on it
    sources = jnp.asarray(np.stack([galaxy, galaxy, galaxy, 0.5 * galaxy]))
    mass = {"theta_E": 0.8, "e1": 0.08, "e2": -0.04, "center_x": 0.01, "center_y": -0.02}
    lens = {"alpha_x": jnp.asarray([0.012, 0.012, 0.012, -0.03]), "alpha_y": jnp.asarray([-0.021, -0.021, -0.021, 0.04])}
    chosen = np.array([3, 3, 3, 5])  # chains 0-2 share a start, chain 3 has its own

    new_lens, new_sources, moved = spread_shared_placements(lens, sources, chosen, p)
    assert moved == 2
    ax, ay = np.asarray(new_lens["alpha_x"]), np.asarray(new_lens["alpha_y"])
    for n in ("alpha_x", "alpha_y"):  # the first chain of a start and a chain with its own start: as they were
        np.testing.assert_array_equal(np.asarray(new_lens[n])[[0, 3]], np.asarray(lens[n])[[0, 3]])
    np.testing.assert_array_equal(np.asarray(new_sources)[[0, 3]], np.asarray(sources)[[0, 3]])
    assert np.all(np.abs(ax) < p) and np.all(np.abs(ay) < p)
    phase = np.stack([np.mod(ax[:3], p), np.mod(ay[:3], p)], axis=-1)
    gaps = [np.abs(phase[i] - phase[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert min(float(np.max(np.minimum(g, p - g))) for g in gaps) > 0.1 * p, phase  # three different placements

    def image(c, src):
        shift = Shift(alpha_x=float(ax[c]), alpha_y=float(ay[c]))
        return np.asarray(LensingOperator(SIE(**mass) + shift, image_grid, source_grid, psf=psf, supersampling=2)(src))

    reference = image(0, sources[0])
    for c in (1, 2):
        err = np.max(np.abs(image(c, new_sources[c]) - reference))  # what is left: bilinear's phase dependence
        # broken variants: the grid moved and the source left in place, or carried the wrong way
        left = np.max(np.abs(image(c, sources[c]) - reference))
        shift_yx = jnp.asarray([ay[c] - ay[0], ax[c] - ax[0]]) / p
        wrong = np.max(np.abs(image(c, translate_source(sources[c], -shift_yx)) - reference))
        assert err < 0.02 * reference.max() and left > 5 * err and wrong > 10 * err, (c, err, left, wrong)


def _tapered_galaxy(n=32):
    """A smooth galaxy that is exactly zero on the field's outer two rows and columns."""
    yy, xx = np.mgrid[:n, :n].astype(float)
    galaxy = np.exp(-((xx - 15.2) ** 2 / 20.0 + (yy - 16.4) ** 2 / 12.0))
    galaxy[:2], galaxy[-2:], galaxy[:, :2], galaxy[:, -2:] = 0.0, 0.0, 0.0, 0.0
    return jnp.asarray(galaxy)


def test_the_placement_wrap_images_the_same_galaxy_one_period_over(x64, getkey):
    """The move's proposal (alpha one period over, the source rolled one pixel along) is the same
    image where the source's edge is empty, so it is always accepted; rolling the other way, or
    not rolling, misses the image by far more."""
    from blindlens.inference.source_shift_model import wrap_placement

    p = 0.05
    image_grid, source_grid = PixelGrid((48, 48), 0.05), PixelGrid((32, 32), p)
    psf = gaussian_psf(0.1, 0.05)
    mass = {"theta_E": 0.8, "e1": 0.08, "e2": -0.04, "center_x": 0.01, "center_y": -0.02, "gamma1": 0.01,
            "gamma2": 0.0}
    model = with_source_shift(sie_shear, p)

    def image(values, source):
        return LensingOperator(lens_from_values(model, values), image_grid, source_grid, psf=psf)(source)

    values = {**mass, "alpha_x": jnp.asarray(0.012), "alpha_y": jnp.asarray(-0.021)}
    galaxy = _tapered_galaxy()
    data = image(values, galaxy)

    def log_likelihood(v, s):
        return -0.5 * jnp.sum(((data - image(v, s)) / 1e-3) ** 2)

    moved, source, accepted = wrap_placement(getkey(), values, galaxy, p, log_likelihood)
    assert np.asarray(accepted).tolist() == [True, True]
    np.testing.assert_allclose([float(moved["alpha_x"]), float(moved["alpha_y"])], [0.012 - p, -0.021 + p], atol=1e-15)
    np.testing.assert_array_equal(np.asarray(source), np.roll(np.roll(np.asarray(galaxy), 1, axis=1), -1, axis=0))
    peak = float(jnp.max(data))
    assert float(jnp.max(jnp.abs(image(moved, source) - data))) < 1e-12 * peak
    # broken variants: the source rolled the wrong way, or left where it was
    wrong_way = np.roll(np.roll(np.asarray(galaxy), -1, axis=1), 1, axis=0)
    assert float(jnp.max(jnp.abs(image(moved, wrong_way) - data))) > 0.1 * peak
    assert float(jnp.max(jnp.abs(image(moved, galaxy) - data))) > 0.05 * peak


def test_the_placement_wrap_accepts_with_the_likelihood_ratio(getkey):
    """Known answer: a proposal whose likelihood is 0.3 of the current one is accepted in 30% of
    keys (within Monte Carlo error), its reverse always, and one onto the prior's edge never;
    an "always accept" variant would fail the first check."""
    from blindlens.inference.source_shift_model import wrap_placement

    p, n = 0.05, 4000
    source = jnp.zeros((8, 8))

    def log_likelihood(v, s):  # alpha_x < 0 is 0.3 times as likely; alpha_y is free
        return jnp.where(v["alpha_x"] < 0.0, jnp.log(0.3), 0.0)

    def accept_rate(alpha_x, alpha_y=0.01):
        values = {"alpha_x": jnp.asarray(alpha_x), "alpha_y": jnp.asarray(alpha_y)}
        keys = jr.split(getkey(), n)
        accepted = jax.vmap(lambda k: wrap_placement(k, values, source, p, log_likelihood)[2])(keys)
        return np.asarray(accepted).mean(axis=0)

    down = accept_rate(0.02)  # to alpha_x = -0.03: ratio 0.3
    assert abs(down[0] - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n), down
    assert down[1] == 1.0  # the y axis, ratio 1
    np.testing.assert_array_equal(accept_rate(-0.03), [1.0, 1.0])  # the reverse: ratio 1 / 0.3
    assert accept_rate(0.0, 0.01)[0] == 0.0  # 0 -> -p lies outside the open prior


def test_the_warmup_fold_moves_only_chains_in_the_outer_halves(getkey):
    """fold=True proposes only where |alpha| >= p/2 (into the central period), with the same likelihood ratio."""
    from blindlens.inference.source_shift_model import wrap_placement

    p, n = 0.05, 2000
    source = jnp.zeros((8, 8))

    def log_likelihood(v, s):
        return jnp.where(v["alpha_x"] < 0.0, jnp.log(0.3), 0.0)

    def accept_rate(alpha_x, alpha_y):
        values = {"alpha_x": jnp.asarray(alpha_x), "alpha_y": jnp.asarray(alpha_y)}
        keys = jr.split(getkey(), n)
        accepted = jax.vmap(lambda k: wrap_placement(k, values, source, p, log_likelihood, fold=True)[2])(keys)
        return np.asarray(accepted).mean(axis=0)

    np.testing.assert_array_equal(accept_rate(0.02, -0.024), [0.0, 0.0])  # central period: left alone
    outer = accept_rate(0.03, -0.026)  # x to -0.02 (ratio 0.3), y to +0.024 (ratio 1)
    assert abs(outer[0] - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n) and outer[1] == 1.0, outer


def test_a_chain_pressed_against_the_placement_edge_is_folded_in_warmup(x64):
    """In the kernel: a warm-up sweep of a chain at alpha_x = -0.97 p ends one period over, in the
    central period, its source rolled along and the lens block's potential that of the new state;
    with wrap_placement=False, or once warm-up is over, it stays at the edge."""
    from blindlens.testing.gold_problem import Problem

    from blindlens.gibbs_kernel import BlindLensGibbs, lens_unconstrained

    problem = Problem()
    p = problem.source_grid.pixel_scale
    model = with_source_shift(problem.lens_model, p)
    galaxy = jnp.zeros(problem.source_grid.shape).at[4:12, 4:12].set(problem.source[4:12, 4:12])

    def one_sweep(wrap, num_warmup):
        kernel = BlindLensGibbs(model, problem.observation, problem.prior, source_grid=problem.source_grid,
                                source_sampler=lambda key, op, data, noise: galaxy, wrap_placement=wrap)
        init = lens_unconstrained(model, {**problem.truth, "alpha_x": -0.97 * p, "alpha_y": 0.2 * p})
        state = kernel.init(jr.key(3), num_warmup, {**init, "source": galaxy}, (), {})
        state = kernel.sample(state, (), {})
        alpha = float(2 * p * jax.nn.sigmoid(state.z["alpha_x"]) - p)
        return kernel, state, alpha

    kernel, state, alpha = one_sweep(True, 5)
    assert 0.0 < alpha < 0.5 * p, alpha  # folded: about -0.97 p + p
    assert np.asarray(state.z["source"])[:, 3].any() and not np.asarray(state.z["source"])[:, 11].any()  # a column back
    # the reported potential is that of the folded lens and rolled source
    fresh = kernel.core.potential(state.core.lens, state.core.source, kernel.joint_model)
    np.testing.assert_allclose(float(state.potential_energy), float(fresh), rtol=1e-6)
    assert one_sweep(False, 5)[2] < -0.5 * p
    assert one_sweep(True, 0)[2] < -0.5 * p  # after warm-up the kept draws are left alone
