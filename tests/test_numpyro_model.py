"""Tests of the NumPyro lens models and the joint model (blindlens.numpyro_model)."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density

from blindlens.grid import PixelGrid
from blindlens.lens_models import EPL, SIE, SIS, CompositeLens, ExternalShear
from blindlens.lensing_operator import LensingOperator
from blindlens.numpyro_model import (
    EPL_SHEAR_SITES,
    IMAGE_SITE,
    SIE_SHEAR_PRIORS,
    SIE_SHEAR_SITES,
    SOURCE_SITE,
    epl_shear,
    epl_shear_multipole,
    joint_model,
    lens_from_values,
    lens_log_prior,
    lens_site_names,
    sie_shear,
)

IMG = PixelGrid((12, 12), 0.2)
SRC = PixelGrid((8, 8), 0.15)


def _obs(mask=None, noise=0.1):
    image = jr.normal(jr.key(0), IMG.shape)
    return SimpleNamespace(image=image, noise=noise, psf=None, mask=mask, image_grid=IMG)


def test_site_names_are_the_documented_ones():
    assert lens_site_names(sie_shear) == SIE_SHEAR_SITES
    assert lens_site_names(epl_shear) == EPL_SHEAR_SITES
    assert lens_site_names(epl_shear_multipole)[-4:] == ("a3_1", "a3_2", "a4_1", "a4_2")


def test_sie_shear_returns_the_lens_with_given_values():
    values = dict(theta_E=1.2, e1=0.1, e2=-0.05, center_x=0.02, center_y=-0.03, gamma1=0.01, gamma2=0.02)
    lens = lens_from_values(sie_shear, values)
    assert isinstance(lens, CompositeLens)
    expected = SIE(theta_E=1.2, e1=0.1, e2=-0.05, center_x=0.02, center_y=-0.03) + ExternalShear(
        gamma1=0.01, gamma2=0.02
    )
    x, y = IMG.coordinates()
    np.testing.assert_allclose(lens.ray_shoot(x, y), expected.ray_shoot(x, y), rtol=1e-6, atol=1e-7)
    lens_epl = lens_from_values(epl_shear, {**values, "gamma": 2.0})
    assert isinstance(lens_epl.components[0], EPL)


def test_log_prior_matches_numpyro_and_priors_can_be_replaced():
    values = dict(theta_E=1.2, e1=0.1, e2=-0.05, center_x=0.02, center_y=-0.03, gamma1=0.01, gamma2=0.02)
    _, logp = lens_log_prior(sie_shear, values)
    expected = sum(float(SIE_SHEAR_PRIORS[k].log_prob(v)) for k, v in values.items())
    np.testing.assert_allclose(float(logp), expected, rtol=1e-5)
    narrow = lambda: sie_shear(priors={"theta_E": dist.Uniform(1.0, 1.5)})  # noqa: E731
    _, logp2 = lens_log_prior(narrow, values)
    np.testing.assert_allclose(float(logp2) - float(logp), np.log(1 / 0.5) - np.log(1 / 2.7), rtol=1e-5)
    with pytest.raises(ValueError, match="Unknown lens parameter"):
        lens_site_names(lambda: sie_shear(priors={"thetaE": dist.Uniform(1.0, 1.5)}))


def test_bad_lens_models_get_clear_errors():
    def returns_nothing():
        numpyro.sample("theta_E", dist.Uniform(0.5, 2.0))

    def observed():
        te = numpyro.sample("theta_E", dist.Uniform(0.5, 2.0), obs=1.0)
        return SIS(theta_E=te)

    def reserved():
        te = numpyro.sample("source", dist.Uniform(0.5, 2.0))
        return SIS(theta_E=te)

    with pytest.raises(ValueError, match="returned None"):
        lens_site_names(returns_nothing)
    with pytest.raises(ValueError, match="observed site"):
        lens_site_names(observed)
    with pytest.raises(ValueError, match="reserved"):
        lens_site_names(reserved)


def _sis_model():
    te = numpyro.sample("theta_E", dist.Uniform(0.5, 1.5))
    return SIS(theta_E=te)


def test_joint_model_log_density_is_prior_plus_masked_gaussian_likelihood():
    mask = np.ones(IMG.shape, bool)
    mask[:3, :] = False
    noise = 0.05 + 0.1 * jr.uniform(jr.key(1), IMG.shape)
    obs = _obs(mask=mask, noise=noise)
    model = joint_model(_sis_model, obs, SRC)
    source = jr.normal(jr.key(2), SRC.shape)
    logp, tr = log_density(model, (), {}, {"theta_E": 0.9, SOURCE_SITE: source})
    assert tr[IMAGE_SITE]["is_observed"]
    op = LensingOperator(SIS(theta_E=0.9), IMG, SRC)
    r = (obs.image - op(source)) / noise
    ll = -0.5 * r**2 - jnp.log(noise) - 0.5 * np.log(2 * np.pi)
    expected = float(jnp.sum(jnp.where(mask, ll, 0.0))) + float(dist.Uniform(0.5, 1.5).log_prob(0.9))
    np.testing.assert_allclose(float(logp), expected, rtol=1e-5)
    log_prior = float(dist.Uniform(0.5, 1.5).log_prob(0.9))
    np.testing.assert_allclose(float(model.log_likelihood(SIS(theta_E=0.9), source)), expected - log_prior, rtol=1e-5)
    # masked pixels do not matter at all, even if the data there are garbage
    garbage = np.asarray(obs.image).copy()
    garbage[~mask] = np.nan
    obs2 = SimpleNamespace(image=garbage, noise=noise, psf=None, mask=mask, image_grid=IMG)
    model2 = joint_model(_sis_model, obs2, SRC)
    logp2, _ = log_density(model2, (), {}, {"theta_E": 0.9, SOURCE_SITE: source})
    np.testing.assert_allclose(float(logp2), float(logp), rtol=1e-6)


def test_joint_model_rejects_bad_observations():
    bad = _obs(noise=0.0)
    with pytest.raises(ValueError, match="noise map must be positive"):
        joint_model(_sis_model, bad, SRC)
    nan_image = SimpleNamespace(image=jnp.full(IMG.shape, jnp.nan), noise=0.1, psf=None, mask=None, image_grid=IMG)
    with pytest.raises(ValueError, match="non-finite"):
        joint_model(_sis_model, nan_image, SRC)


def test_joint_model_is_differentiable_in_the_lens():
    model = joint_model(_sis_model, _obs(), SRC)
    source = jr.normal(jr.key(2), SRC.shape)

    def f(te):
        return log_density(model, (), {}, {"theta_E": te, SOURCE_SITE: source})[0]

    g = jax.grad(f)(0.9)
    eps = 1e-3
    fd = (f(0.9 + eps) - f(0.9 - eps)) / (2 * eps)
    np.testing.assert_allclose(float(g), float(fd), rtol=2e-2)


def test_joint_model_pickles_and_lens_init_values_follow_numpyro_init_strategies():
    """The default operator factory is a module-level callable (a closure made every kernel and
    MCMC holding the model unpicklable); init strategies give the lens's starting values."""
    import pickle

    from numpyro.infer import init_to_median, init_to_uniform, init_to_value

    from blindlens.numpyro_model import is_default_init_strategy, lens_init_values

    model = joint_model(_sis_model, _obs(), SRC)
    copy = pickle.loads(pickle.dumps(model))
    source = jr.normal(jr.key(2), SRC.shape)
    lens = SIS(theta_E=0.9)
    np.testing.assert_allclose(copy.operator(lens)(source), model.operator(lens)(source), rtol=1e-6)
    values = lens_init_values(sie_shear, init_to_value(values={"theta_E": 1.3, "e1": 0.05}))
    assert set(values) == set(SIE_SHEAR_SITES)
    assert float(values["theta_E"]) == pytest.approx(1.3) and float(values["e1"]) == pytest.approx(0.05)
    assert -0.6 < float(values["e2"]) < 0.6  # unnamed sites fall back to init_to_uniform, inside the support
    median = lens_init_values(sie_shear, init_to_median(num_samples=200))
    assert float(median["theta_E"]) == pytest.approx(1.65, abs=0.15)  # the median of U(0.3, 3)
    assert is_default_init_strategy(init_to_uniform) and is_default_init_strategy(init_to_uniform(radius=2))
    assert not is_default_init_strategy(init_to_median) and not is_default_init_strategy(init_to_uniform(radius=1))
