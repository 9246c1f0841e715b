import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def getkey():
    """Fresh, deterministic PRNG keys: ``getkey()`` returns a new key each call."""
    state = {"key": jr.key(20251106)}

    def _next():
        state["key"], sub = jr.split(state["key"])
        return sub

    return _next


@pytest.fixture
def x64():
    """Run a test in float64 (restores the previous setting afterwards)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
