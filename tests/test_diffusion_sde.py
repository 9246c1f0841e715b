"""VE SDE and reverse-time integration against a Gaussian data distribution with an exact score."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from blindlens.diffusion_sde import VESDE, reverse_time_grid, sample_reverse_diffusion

SDE = VESDE(0.01, 20.0)
S0 = 0.7  # data: x0 ~ N(0, S0^2 I)


def exact_score(x, t, args):
    return -x / (S0**2 + SDE.sigma(t) ** 2)


def draw(key, n, score=exact_score, **kw):
    fn = jax.jit(jax.vmap(lambda k: sample_reverse_diffusion(k, SDE, score, (8, 8), **kw)))
    return np.asarray(fn(jr.split(key, n))).reshape(-1)


def test_schedule_identities():
    t = jnp.linspace(0, 1, 11)
    assert np.allclose(SDE.sigma(0.0), 0.01) and np.allclose(SDE.sigma(1.0), 20.0)
    # g^2 = d sigma^2 / dt
    dsig2 = jax.vmap(jax.grad(lambda s: SDE.sigma(s) ** 2))(t)
    assert np.allclose(SDE.diffusion(t) ** 2, dsig2, rtol=1e-5)
    assert np.allclose(SDE.time_at_sigma(SDE.sigma(t)), t, atol=1e-6)
    ts = reverse_time_grid(10, 1e-3)
    assert ts[0] == 1.0 and np.isclose(ts[-1], 1e-3) and np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_reverse_sde_reproduces_gaussian(solver, getkey):
    x = draw(getkey(), 1000, num_steps=100, solver=solver)  # 64000 iid pixels
    n = x.size
    # Monte-Carlo tolerances: 5 sigma of the mean and of the sample variance.
    assert abs(x.mean()) < 5 * S0 / np.sqrt(n)
    assert abs(x.var() / S0**2 - 1) < 5 * np.sqrt(2 / n) + 0.01  # + Euler bias at 100 steps
    assert stats.kstest(x[::7] / S0, "norm").pvalue > 1e-3


def test_wrong_score_is_detected(getkey):
    """Negative control: a score for the wrong variance must fail the same checks."""
    wrong = lambda x, t, a: -x / (0.5**2 + SDE.sigma(t) ** 2)  # noqa: E731
    x = draw(getkey(), 1000, score=wrong, num_steps=100)
    assert abs(x.var() / S0**2 - 1) > 0.3
    assert stats.kstest(x[::7] / S0, "norm").pvalue < 1e-6


def test_error_shrinks_with_steps(getkey):
    """Probability-flow ODE with common random inputs: the bias of the std falls with the step count."""
    key = getkey()
    errs = [abs(draw(key, 500, num_steps=n, solver="heun", probability_flow=True).std() - S0) for n in (8, 32, 128)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.01


def test_deterministic_given_key(getkey):
    key = getkey()
    a = draw(key, 3, num_steps=20)
    b = draw(key, 3, num_steps=20)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, draw(getkey(), 3, num_steps=20))


def test_corrector_keeps_distribution(getkey):
    x = draw(getkey(), 400, num_steps=50, corrector_steps=1, corrector_snr=0.05)  # ULA is biased O(snr^2)
    assert abs(x.var() / S0**2 - 1) < 5 * np.sqrt(2 / x.size) + 0.03


def test_refuses_backward_unsafe_solvers():
    with pytest.raises(ValueError, match="backwards in time"):
        sample_reverse_diffusion(jr.key(0), SDE, exact_score, (2, 2), num_steps=2, solver="shark")


def test_bad_sde_parameters():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(1.0, 0.5)


# ---- IMEX (linearly implicit) solver -----------------------------------------------------------


def test_imex_step_solves_its_linear_system(getkey, x64):
    """One IMEX step equals the dense solve of (I + theta h L) y1 = rhs (no noise: probability flow)."""
    from blindlens.diffusion_sde import LinearlyImplicitEulerMaruyama, ReverseDiffusion

    sde = VESDE(0.01, 10.0)
    n = 6
    b = jr.normal(getkey(), (n, n), jnp.float64)
    spd = b @ b.T + 0.1 * jnp.eye(n)  # L / g^2
    c = jr.normal(getkey(), (n,), jnp.float64)
    explicit_matrix = jr.normal(getkey(), (n, n), jnp.float64)

    def explicit(x, t, args):
        return explicit_matrix @ x

    def stiff(x, t, args):
        return c - spd @ x

    x0 = jr.normal(getkey(), (n,), jnp.float64)
    t0, t1 = 0.7, 0.6
    theta = 0.6
    integrator = ReverseDiffusion(sde, explicit, (n,), LinearlyImplicitEulerMaruyama(theta=theta), True, stiff)
    y1 = integrator.step(getkey(), x0, t0, t1)
    h = t0 - t1  # the solver runs in s = 1 - t
    g0 = 0.5 * sde.diffusion(t0) ** 2  # probability flow: 1/2 g^2
    g1 = 0.5 * sde.diffusion(t1) ** 2
    rhs = x0 + h * g0 * explicit_matrix @ x0 + theta * h * g1 * c + (1 - theta) * h * g0 * stiff(x0, t0, None)
    expected = jnp.linalg.solve(jnp.eye(n) + theta * h * g1 * spd, rhs)
    np.testing.assert_allclose(y1, expected, rtol=1e-4, atol=1e-6)


def test_imex_needs_a_stiff_part():
    from blindlens.diffusion_sde import LinearlyImplicitEulerMaruyama, ReverseDiffusion

    with pytest.raises(ValueError, match="stiff_score_fn"):
        ReverseDiffusion(VESDE(0.01, 10.0), lambda x, t, a: -x, (3,), "imex")
    with pytest.raises(ValueError, match="theta"):
        LinearlyImplicitEulerMaruyama(theta=0.2)
