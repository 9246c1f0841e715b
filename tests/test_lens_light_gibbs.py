"""The Gibbs kernel with deflector light, against the exact marginal of a Gaussian-source problem.

With a Gaussian source prior ``s ~ N(0, S)`` and a lens light ``a L`` (``L`` its unit-amplitude
PSF-convolved image), ``p(theta, a | y) ∝ p(theta) p(a) N(y - a L; 0, A S A^T + sigma^2 I)``
(the gold standard of tests/test_gibbs_kernel.py with light), which plain NUTS samples exactly.
BlindLensGibbs, whose lens block moves ``theta_E`` and the light amplitude together and whose
source step fits the image less the light, must agree with it; a source step that ignores the
light (the broken variant) must not.
"""

import arviz as az
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from blindlens.testing.gold_problem import LowRankExactGuidance, Problem
from numpyro.infer import MCMC, NUTS

from blindlens.gibbs_kernel import BlindLensGibbs, GibbsDDRMConfig
from blindlens.lens_initialization import gaussian_log_evidence
from blindlens.lens_models import SIS
from blindlens.lensing_operator import LensingOperator
from blindlens.light_profiles import LensLightImager, LensWithLight, SersicEllipse
from blindlens.numpyro_model import JointModel
from blindlens.observation import Observation
from blindlens.psf import PSF
from blindlens.source_posterior import SourceSamplerConfig

SHAPE = dict(R_sersic=0.4, n_sersic=2.0, e1=0.1, e2=0.0, center_x=0.0, center_y=0.0)
AMP = 3.0


class LightProblem(Problem):
    """:class:`Problem` (SIS, theta_E free, 16x16 GP source) plus a Sérsic light of free amplitude."""

    def __init__(self):
        super().__init__(free=("theta_E",))
        self.light_imager = LensLightImager(self.image_grid, PSF(self.psf, self.image_grid.shape), 1)
        self.unit_light = self.light_imager(SersicEllipse(amp=1.0, **SHAPE))
        image = jnp.asarray(self.observation.image) + AMP * self.unit_light
        self.observation = Observation(image, self.noise, self.psf, self.image_grid.pixel_scale)

    def lens_model(self):
        te = numpyro.sample("theta_E", dist.Uniform(0.5, 1.2))
        amp = numpyro.sample("lens_light_amp", dist.Uniform(0.0, 10.0))
        return LensWithLight(SIS(theta_E=te, center_x=self.truth["center_x"]), SersicEllipse(amp=amp, **SHAPE))

    def marginal_model(self):
        te = numpyro.sample("theta_E", dist.Uniform(0.5, 1.2))
        amp = numpyro.sample("lens_light_amp", dist.Uniform(0.0, 10.0))
        op = LensingOperator(SIS(theta_E=te, center_x=self.truth["center_x"]), self.image_grid, self.source_grid,
                             psf=self.psf)
        image = jnp.asarray(self.observation.image) - amp * self.unit_light
        inv_var = jnp.full(image.shape, 1.0 / self.noise**2, image.dtype)
        numpyro.factor("marginal_likelihood", gaussian_log_evidence(op, self.basis, image, inv_var))


@pytest.fixture(scope="module")
def light_problem():
    problem = LightProblem()
    mcmc = MCMC(NUTS(problem.marginal_model), num_warmup=300, num_samples=1000, num_chains=1, progress_bar=False)
    mcmc.run(jr.key(11))
    exact = {n: np.asarray(v) for n, v in mcmc.get_samples().items()}
    return problem, exact


def _gibbs(problem, key):
    exact = LowRankExactGuidance(basis=problem.basis)
    kernel = BlindLensGibbs(
        problem.lens_model, problem.observation, problem.prior,
        source_config=SourceSamplerConfig(guidance=exact, num_steps=20),
        warm_start=GibbsDDRMConfig(guidance=exact, num_steps=20),
        source_grid=problem.source_grid, warm_start_tries=4,
    )
    mcmc = MCMC(kernel, num_warmup=60, num_samples=150, num_chains=2, chain_method=jax.vmap, progress_bar=False)
    mcmc.run(key)
    return az.from_numpyro(mcmc, log_likelihood=False).posterior


def _z(posterior, exact, name):
    draws = posterior[name].values
    ess = float(az.ess(draws))
    mcse = np.sqrt(draws.std() ** 2 / ess + exact[name].std() ** 2 / float(az.ess(exact[name][None])))
    return (draws.mean() - exact[name].mean()) / mcse


def test_gibbs_with_lens_light_matches_the_exact_marginal(light_problem):
    problem, exact = light_problem
    assert abs(exact["lens_light_amp"].mean() - AMP) < 4 * exact["lens_light_amp"].std()
    posterior = _gibbs(problem, jr.key(5))
    for name in ("theta_E", "lens_light_amp"):
        z = _z(posterior, exact, name)
        sd_ratio = posterior[name].values.std() / exact[name].std()
        print(f"{name}: gibbs {float(posterior[name].mean()):.5f} +- {float(posterior[name].std()):.5f}, "
              f"exact {exact[name].mean():.5f} +- {exact[name].std():.5f}, z {z:.2f}, sd ratio {sd_ratio:.2f}")
        assert abs(z) < 3.0, name
        assert 0.7 < sd_ratio < 1.4, name


def test_a_source_step_that_ignores_the_light_fails(light_problem, monkeypatch):
    problem, exact = light_problem
    monkeypatch.setattr(JointModel, "source_data", lambda self, lens: self.masked_image)
    posterior = _gibbs(problem, jr.key(5))
    z = [abs(_z(posterior, exact, n)) for n in ("theta_E", "lens_light_amp")]
    print(f"broken: |z| {z}")
    assert max(z) > 5.0
