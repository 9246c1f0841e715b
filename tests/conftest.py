import gc
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


def _memory_map_count() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


def _release_jax_executables():
    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code_per_module():
    """Drop JAX's compiled executables after each test module.

    Every XLA:CPU executable keeps its own memory mappings; one pytest process compiling the whole
    suite passed Linux's default ``vm.max_map_count`` (65,530) and LLVM crashed with a segmentation
    fault inside a later compile (CI, stop 11). Clearing the caches unmaps them (measured: the
    suite's peak went from > 46,000 mappings at 42 % of the tests to 26,000, inside
    ``test_gibbs_kernel.py``).
    """
    yield
    _release_jax_executables()


@pytest.fixture(autouse=True)
def _release_compiled_code_when_many():
    """The same within a module, after any test that leaves more than 30,000 mappings."""
    yield
    if _memory_map_count() > 30_000:
        _release_jax_executables()
