"""The command line's persistent XLA compilation cache: where it goes, how to turn it off, that it fills."""

import subprocess
import sys

import pytest

from blindlens.compilation_cache import OFF_VALUES, enable_compilation_cache


def test_default_folder_is_under_the_user_cache(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    path = enable_compilation_cache(env)
    assert path == str(tmp_path / "blindlens" / "jax")
    assert env["JAX_COMPILATION_CACHE_DIR"] == path  # inherited by worker processes


@pytest.mark.parametrize("value", OFF_VALUES + ("OFF", " no "))
def test_it_can_be_turned_off(value):
    env = {"BLINDLENS_COMPILATION_CACHE": value}
    assert enable_compilation_cache(env) is None
    assert "JAX_COMPILATION_CACHE_DIR" not in env


def test_an_explicit_folder_and_the_users_jax_setting_win(tmp_path):
    env = {"BLINDLENS_COMPILATION_CACHE": str(tmp_path / "mine"), "XDG_CACHE_HOME": str(tmp_path)}
    assert enable_compilation_cache(env) == str(tmp_path / "mine")
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax's"), "BLINDLENS_COMPILATION_CACHE": str(tmp_path / "mine")}
    assert enable_compilation_cache(env) == str(tmp_path / "jax's")


def test_a_compiled_program_lands_in_the_cache_and_is_reused(tmp_path):
    program = (
        "import os; from blindlens.compilation_cache import enable_compilation_cache; "
        "enable_compilation_cache(); import jax, jax.numpy as jnp; "
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0); "
        "print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum()))"
    )
    env = {"BLINDLENS_COMPILATION_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
           "PATH": "", "HOME": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    entries = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*-cache")}
    assert entries, "nothing was written to the compilation cache"
    second = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0 and second.stdout == first.stdout
    # read back, not recompiled and rewritten
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*-cache")} == entries
    # turned off: nothing written
    off = {**env, "BLINDLENS_COMPILATION_CACHE": "off", "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    third = subprocess.run([sys.executable, "-c", program], env=off, capture_output=True, text=True, timeout=300, check=False)
    assert third.returncode == 0 and not (tmp_path / "home" / ".cache").exists()
