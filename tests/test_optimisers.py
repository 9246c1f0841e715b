"""The Adam maximiser of the pre-fit and evidence search against optax's Adam, and the training optimiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blindlens._optimisers import adam_maximise, training_optimizer


def _optax_adam(objective, u0, num_steps, learning_rate):
    """optax's Adam on -objective with a cosine-decayed step, non-finite gradients as 0 (the reference)."""
    import optax

    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
    state, u = opt.init(u0), u0
    for _ in range(num_steps):
        g = jax.grad(objective)(u)
        updates, state = opt.update(jnp.where(jnp.isfinite(g), -g, 0.0), state, u)
        u = optax.apply_updates(u, updates)
    return u


def _objective(u):
    """A concave, anisotropic, non-quadratic objective with its maximum at (0.3, -1.2, 2.0)."""
    d = u - jnp.array([0.3, -1.2, 2.0])
    return -(d[0] ** 2 + 10 * d[1] ** 2 + 0.1 * d[2] ** 2) - 0.05 * d[0] ** 4


def test_adam_maximise_is_optax_adam_with_a_cosine_step(x64):
    u0 = jnp.array([2.0, 1.0, -1.0])
    u, value = adam_maximise(_objective, u0, 40, 0.2)
    np.testing.assert_allclose(np.asarray(u), np.asarray(_optax_adam(_objective, u0, 40, 0.2)), rtol=1e-12, atol=1e-12)
    assert float(value) == float(_objective(u))
    # the broken variant, twice the step, is a different iteration
    far, _ = adam_maximise(_objective, u0, 40, 0.4)
    assert np.max(np.abs(np.asarray(far) - np.asarray(u))) > 1e-3


def test_adam_maximise_climbs_to_the_maximum_and_survives_bad_gradients(x64):
    u, value = adam_maximise(_objective, jnp.array([2.0, 1.0, -1.0]), 600, 0.1)
    np.testing.assert_allclose(np.asarray(u), [0.3, -1.2, 2.0], atol=2e-3)
    assert float(value) > -1e-5

    def holed(u):  # NaN gradient in one coordinate below 0: that coordinate stalls, the rest go on
        return _objective(u) + jnp.where(u[0] < 0.0, jnp.nan, 0.0) * u[0]

    u, value = adam_maximise(holed, jnp.array([-0.5, 1.0, -1.0]), 300, 0.1)
    assert np.isfinite(np.asarray(u)).all() and float(value) == -np.inf  # the value at u[0] < 0 is NaN -> -inf
    np.testing.assert_allclose(np.asarray(u)[1], -1.2, atol=1e-2)


def test_the_training_optimizer_warms_up_linearly(x64):
    opt = training_optimizer(1e-2, 10, 1.0)
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    updates, state = opt.update({"w": jnp.array([300.0, 400.0, 0.0])}, state, params)
    assert np.all(np.asarray(updates["w"]) == 0.0)  # step 0 of the warm-up has rate 0
    updates, _ = opt.update({"w": jnp.array([300.0, 400.0, 0.0])}, state, params)
    assert -float(updates["w"][0]) == pytest.approx(1e-3, rel=1e-6)  # rate 1e-3 at step 1 of 10 (Adam's |step| = rate)
