"""Tests for blindlens.lens_models: autodiff identities, cross-model identities, lenstronomy
agreement (lenstronomy is imported inside tests, as an oracle only), q -> 1 / centre stability,
vmap, input validation and the critical-curve helper."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blindlens.grid import PixelGrid
from blindlens.lens_models import (
    EPL,
    SIE,
    SIS,
    AbstractLens,
    CompositeLens,
    ExternalShear,
    Multipole,
    Shift,
    critical_curves_and_caustics,
    deflection_sie,
)

SEED = 20251126


def _random_points(n, rng, r_min=0.1, half=2.5):
    x = rng.uniform(-half, half, 4 * n)
    y = rng.uniform(-half, half, 4 * n)
    keep = np.hypot(x, y) > r_min + 0.3  # the centres are within 0.3 of the origin
    return x[keep][:n], y[keep][:n]


def _random_lenses(rng):
    """(lenstronomy name, kwargs, our Module) for random parameters of every profile."""
    out = []

    def ell():
        return dict(e1=rng.uniform(-0.3, 0.3), e2=rng.uniform(-0.3, 0.3))

    def cen():
        return dict(center_x=rng.uniform(-0.2, 0.2), center_y=rng.uniform(-0.2, 0.2))

    kw = dict(theta_E=rng.uniform(0.5, 2.0), **cen())
    out.append(("SIS", kw))
    kw = dict(theta_E=rng.uniform(0.5, 2.0), **ell(), **cen())
    out.append(("SIE", kw))
    for gamma in (1.6, 1.85, 2.0, 2.2, 2.4):
        kw = dict(theta_E=rng.uniform(0.5, 2.0), gamma=gamma, **ell(), **cen())
        out.append(("EPL", kw))
    kw = dict(gamma1=rng.uniform(-0.1, 0.1), gamma2=rng.uniform(-0.1, 0.1),
              ra_0=rng.uniform(-0.2, 0.2), dec_0=rng.uniform(-0.2, 0.2))
    out.append(("SHEAR", kw))
    for m in (2, 3, 4):
        kw = dict(m=m, a_m=rng.uniform(0.0, 0.1), phi_m=rng.uniform(-np.pi, np.pi), **cen())
        out.append(("MULTIPOLE", kw))
    out.append(("SHIFT", dict(alpha_x=rng.uniform(-0.03, 0.03), alpha_y=rng.uniform(-0.03, 0.03))))
    return out


@eqx.filter_jit
def _evaluate(lens, x, y):
    """Everything a lens computes, in one compiled call (eager dispatch is slow on 2 cores)."""
    return lens.deflection(x, y), lens.potential(x, y), lens.hessian(x, y), lens.convergence(x, y)


@eqx.filter_jit
def _autodiff(lens, x, y):
    """Autodiff of the potential: gradient, Hessian; and the base-class JVP Hessian."""
    grad_psi = jax.vmap(jax.grad(lens.potential, argnums=(0, 1)))(x, y)
    hess_psi = jax.vmap(jax.hessian(lens.potential, argnums=(0, 1)))(x, y)
    return grad_psi, hess_psi, AbstractLens.hessian(lens, x, y)


_CLASSES = {"SIS": SIS, "SIE": SIE, "EPL": EPL, "SHEAR": ExternalShear, "MULTIPOLE": Multipole, "SHIFT": Shift}


def _build(name, kw, dtype):
    """Our Module with parameters rounded to ``dtype``; also returns the rounded kwargs (f64)."""
    rounded = {k: (v if k == "m" else float(np.asarray(v, dtype))) for k, v in kw.items()}
    params = {k: (v if k == "m" else jnp.asarray(v, dtype)) for k, v in rounded.items()}
    return _CLASSES[name](**params), rounded


def _lenses_f64():
    rng = np.random.default_rng(SEED)
    return [_build(name, kw, np.float64)[0] for name, kw in _random_lenses(rng)]


def _ids():
    rng = np.random.default_rng(SEED)
    return [f"{name}-{kw.get('gamma', kw.get('m', ''))}" for name, kw in _random_lenses(rng)]


# ---------------------------------------------------------------------------------------------
# V-1 / V-2 / V-3: autodiff identities (float64)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(_ids())), ids=_ids())
def test_autodiff_identities(x64, index):
    lens = _lenses_f64()[index]
    rng = np.random.default_rng(1)
    x, y = (jnp.asarray(a) for a in _random_points(50, rng))

    grad_psi, hess_psi, generic = _autodiff(lens, x, y)
    alpha, _, (f_xx, f_xy, f_yx, f_yy), kappa = _evaluate(lens, x, y)
    for g, a in zip(grad_psi, alpha):
        np.testing.assert_allclose(g, a, rtol=1e-10, atol=1e-12)

    np.testing.assert_allclose(hess_psi[0][0], f_xx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hess_psi[0][1], f_xy, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hess_psi[1][0], f_yx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hess_psi[1][1], f_yy, rtol=1e-9, atol=1e-12)
    kappa_ad = 0.5 * (hess_psi[0][0] + hess_psi[1][1])
    np.testing.assert_allclose(kappa, kappa_ad, rtol=1e-9, atol=1e-12)

    # the generic (JVP) Hessian of the base class agrees with the closed form
    for g, c in zip(generic, (f_xx, f_xy, f_yx, f_yy)):
        np.testing.assert_allclose(g, c, rtol=1e-9, atol=1e-12)


def test_hessian_matches_finite_differences_on_axes(x64):
    """V-3: AD/closed-form Hessian vs central differences of the deflection on the axes."""
    lens = EPL(1.1, 2.15, 0.12, -0.07) + Multipole(4, 0.03, 0.2) + ExternalShear(0.02, 0.01)
    r = jnp.linspace(0.1, 5.5, 12)
    h = 1e-6

    @eqx.filter_jit
    def both(lens, x, y):
        shifted = [lens.deflection(x + dx, y + dy) for dx, dy in ((h, 0), (-h, 0), (0, h), (0, -h))]
        return lens.hessian(x, y), shifted

    for x, y in ((r, 0 * r), (0 * r, r), (-r, 0 * r), (0 * r, -r)):
        (f_xx, f_xy, f_yx, f_yy), shifted = both(lens, x, y)
        (axp, ayp), (axm, aym), (bxp, byp), (bxm, bym) = shifted
        np.testing.assert_allclose(f_xx, (axp - axm) / (2 * h), atol=1e-7)
        np.testing.assert_allclose(f_yx, (ayp - aym) / (2 * h), atol=1e-7)
        np.testing.assert_allclose(f_xy, (bxp - bxm) / (2 * h), atol=1e-7)
        np.testing.assert_allclose(f_yy, (byp - bym) / (2 * h), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# V-4: cross-model identities
# ---------------------------------------------------------------------------------------------


def test_sie_equals_epl_gamma_2(x64):
    rng = np.random.default_rng(2)
    x, y = _random_points(200, rng, r_min=0.0)
    # includes both sides of the SIE's series/closed-form switch at |e| = 1e-3
    for e1, e2 in ((0.2, -0.1), (0.0, 0.0), (-0.35, 0.3), (1e-9, 0.0), (0.999e-3, 0.0),
                   (0.0, -1.001e-3)):
        sie = SIE(1.3, e1, e2, 0.1, -0.05)
        epl = EPL(1.3, 2.0, e1, e2, 0.1, -0.05)
        for a, b in zip(sie.deflection(x, y), epl.deflection(x, y)):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(sie.potential(x, y), epl.potential(x, y), rtol=1e-13, atol=1e-14)
        for a, b in zip(sie.hessian(x, y), epl.hessian(x, y)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_sis_equals_round_sie(x64):
    rng = np.random.default_rng(3)
    x, y = _random_points(200, rng, r_min=0.0)
    sis, sie = SIS(0.9, 0.1, 0.2), SIE(0.9, 0.0, 0.0, 0.1, 0.2)
    for a, b in zip(sis.deflection(x, y), sie.deflection(x, y)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(sis.potential(x, y), sie.potential(x, y), rtol=1e-14)
    np.testing.assert_allclose(sis.convergence(x, y), sie.convergence(x, y), rtol=1e-14)


def test_mean_convergence_inside_einstein_radius_is_one(x64):
    """For the SIS, the mean convergence inside theta_E is 1 (alpha(r) = M_2D(<r) / (pi r))."""
    lens = SIS(1.3)
    r = jnp.asarray([0.5, 1.3, 2.7])
    ax, _ = lens.deflection(r, 0 * r)
    # alpha(r) = r <kappa>(<r): equals theta_E for the SIS at every radius
    np.testing.assert_allclose(ax, 1.3, rtol=1e-14)
    # SIS magnification along the axis: mu = r / (r - theta_E)
    np.testing.assert_allclose(lens.magnification(r, 0 * r), r / (r - 1.3), rtol=1e-12)


def test_composite_additivity_and_flattening(x64):
    a, b, c = SIE(1.2, 0.1, 0.05), ExternalShear(0.03, -0.02), Multipole(3, 0.02, 0.4, 0.1, 0.0)
    comp = (a + b) + c
    assert isinstance(comp, CompositeLens)
    assert comp.components == (a, b, c)
    assert (a + (b + c)).components == (a, b, c)
    assert sum([a, b, c]).components == (a, b, c)
    rng = np.random.default_rng(4)
    x, y = (jnp.asarray(v) for v in _random_points(100, rng))
    for method in ("deflection", "hessian"):
        got = getattr(comp, method)(x, y)
        parts = [getattr(p, method)(x, y) for p in (a, b, c)]
        for i, g in enumerate(got):
            np.testing.assert_allclose(g, sum(p[i] for p in parts), rtol=1e-14, atol=1e-15)
    for method in ("potential", "convergence"):
        expected = sum(getattr(p, method)(x, y) for p in (a, b, c))
        np.testing.assert_allclose(getattr(comp, method)(x, y), expected, rtol=1e-14, atol=1e-15)
    bx, by = comp.ray_shoot(x, y)
    ax, ay = comp.deflection(x, y)
    np.testing.assert_allclose(bx, x - ax, rtol=1e-15)
    np.testing.assert_allclose(by, y - ay, rtol=1e-15)


def test_elementwise_over_any_shape():
    lens = SIE(1.0, 0.1, 0.2) + ExternalShear(0.01, 0.02)
    x = jnp.linspace(-1, 1, 24).reshape(2, 3, 4)
    y = jnp.linspace(1, -0.7, 24).reshape(2, 3, 4)
    (ax, ay), *_ = _evaluate(lens, x, y)
    flat, *_ = _evaluate(lens, x.ravel(), y.ravel())
    assert ax.shape == (2, 3, 4)
    np.testing.assert_allclose(ax.ravel(), flat[0], rtol=1e-6)
    np.testing.assert_allclose(ay.ravel(), flat[1], rtol=1e-6)
    # scalar and broadcast inputs
    assert lens.convergence(0.3, jnp.zeros((5,))).shape == (5,)
    assert lens.magnification(0.3, 0.4).shape == ()


# ---------------------------------------------------------------------------------------------
# V-4: lenstronomy agreement
# ---------------------------------------------------------------------------------------------


def _lenstronomy_agreement(dtype):
    """Max |differences| of our profiles vs lenstronomy (float64) at random parameters/points."""
    from lenstronomy.LensModel.lens_model import LensModel

    rng = np.random.default_rng(SEED)
    x, y = _random_points(400, rng)
    x, y = x.astype(dtype).astype(float), y.astype(dtype).astype(float)
    results = {}
    for name, kw in _random_lenses(rng):
        lens, rounded = _build(name, kw, dtype)
        lm = LensModel([name])
        ax, ay = lm.alpha(x, y, [rounded])
        (bx, by), psi, h_our, kappa = _evaluate(lens, jnp.asarray(x, dtype), jnp.asarray(y, dtype))
        assert bx.dtype == dtype
        d_alpha = max(np.max(np.abs(ax - bx)), np.max(np.abs(ay - by)))
        dpsi = lm.potential(x, y, [rounded]) - np.asarray(psi, float)
        d_psi = np.max(np.abs(dpsi - np.mean(dpsi)))
        if name == "SHIFT":  # lenstronomy returns 0; ours is alpha . x, whose gradient is the deflection (autodiff tests)
            d_psi = np.max(np.abs(np.asarray(psi, float) - (rounded["alpha_x"] * x + rounded["alpha_y"] * y)))
        # lenstronomy's SIE Hessian is a 1e-10 finite difference (~1e-5 error): use its
        # analytic EPL(gamma=2) Hessian as the oracle for the SIE instead
        if name == "SIE":
            lm_h, kw_h = LensModel(["EPL"]), [dict(rounded, gamma=2.0)]
        else:
            lm_h, kw_h = lm, [rounded]
        h_ref = lm_h.hessian(x, y, kw_h)
        d_hess = max(np.max(np.abs(a - np.asarray(b, float))) for a, b in zip(h_ref, h_our))
        d_kappa = np.max(np.abs(lm_h.kappa(x, y, kw_h) - np.asarray(kappa, float)))
        key = f"{name}-{kw.get('gamma', kw.get('m', ''))}"
        results[key] = dict(alpha=d_alpha, psi=d_psi, hessian=d_hess, kappa=d_kappa)
    return results


def test_lenstronomy_agreement_float64(x64):
    results = _lenstronomy_agreement(np.float64)
    for key, r in results.items():
        assert r["alpha"] < 1e-8, (key, r)
        assert r["psi"] < 1e-8, (key, r)
        assert r["hessian"] < 1e-8, (key, r)
        assert r["kappa"] < 1e-8, (key, r)


def test_lenstronomy_agreement_float32():
    results = _lenstronomy_agreement(np.float32)
    for key, r in results.items():
        assert r["alpha"] < 1e-6, (key, r)
        assert r["psi"] < 1e-5, (key, r)
        assert r["hessian"] < 1e-5, (key, r)
        assert r["kappa"] < 1e-5, (key, r)


def test_lenstronomy_agreement_detects_convention_errors(x64):
    """Negative control: a sign flip of e2 or of gamma2 is far outside the tolerance."""
    from lenstronomy.LensModel.lens_model import LensModel

    rng = np.random.default_rng(5)
    x, y = _random_points(100, rng)
    kw = dict(theta_E=1.2, e1=0.15, e2=-0.08, center_x=0.05, center_y=-0.03)
    ax, _ = LensModel(["SIE"]).alpha(x, y, [kw])
    bx, _ = SIE(**dict(kw, e2=0.08)).deflection(x, y)
    assert np.max(np.abs(ax - bx)) > 1e-3
    ax, _ = LensModel(["SHEAR"]).alpha(x, y, [dict(gamma1=0.03, gamma2=-0.02)])
    bx, _ = ExternalShear(0.03, 0.02).deflection(x, y)
    assert np.max(np.abs(ax - bx)) > 1e-3


# ---------------------------------------------------------------------------------------------
# stability at q -> 1 and at the exact centre
# ---------------------------------------------------------------------------------------------

_STABILITY_CASES = [
    ("SIE", lambda e1, e2, cx, cy: SIE(1.1, e1, e2, cx, cy)),
    # gamma also depends on e2, so d/d e2 covers d/d gamma too
    ("EPL", lambda e1, e2, cx, cy: EPL(1.1, 2.2 + e2, e1, e2, cx, cy)),
    ("EPL-shallow", lambda e1, e2, cx, cy: EPL(1.1, 1.7 + e2, e1, e2, cx, cy)),
    ("SIS", lambda e1, e2, cx, cy: SIS(1.1 + e1, cx, cy)),
    ("MULTIPOLE", lambda e1, e2, cx, cy: Multipole(4, 0.05 + e1, 0.3 + e2, cx, cy)),
]


def _assert_stable(make, dtype):
    # points: exact centre, on both axes, near the centre, generic
    x = jnp.asarray([0.3, 0.0, 0.7, 0.0, 1e-7, 1.3, -0.4], dtype)
    y = jnp.asarray([-0.2, 0.0, 0.0, -0.9, -1e-7, 0.2, 1.1], dtype)
    cx, cy = jnp.asarray(0.3, dtype), jnp.asarray(-0.2, dtype)  # first point is the centre

    def loss(e1, e2, cx, cy, x, y):
        lens = make(e1, e2, cx, cy)
        bx, by = lens.ray_shoot(x, y)
        return jnp.sum(bx**2 + by**2) + jnp.sum(lens.potential(x, y))

    @jax.jit
    def check(e1, e2, cx, cy, x, y):
        value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))(e1, e2, cx, cy, x, y)
        lens = make(e1, e2, cx, cy)
        outputs = (*lens.deflection(x, y), lens.potential(x, y), *lens.hessian(x, y),
                   lens.convergence(x, y))
        return value, grads, outputs

    for e in (0.0, 1e-8, 1e-4, 0.3):
        e1, e2 = jnp.asarray(e, dtype), jnp.asarray(-0.5 * e, dtype)
        value, grads, outputs = check(e1, e2, cx, cy, x, y)
        assert np.isfinite(value)
        for g in grads:
            assert g.dtype == dtype
            assert np.all(np.isfinite(g)), (e, grads)
        for out in outputs:
            assert out.dtype == dtype
            assert np.all(np.isfinite(out)), (e, out)


@pytest.mark.parametrize("name,make", _STABILITY_CASES, ids=[c[0] for c in _STABILITY_CASES])
def test_no_nans_at_round_and_centre_float32(name, make):
    _assert_stable(make, jnp.float32)


@pytest.mark.parametrize("name,make", _STABILITY_CASES, ids=[c[0] for c in _STABILITY_CASES])
def test_no_nans_at_round_and_centre_float64(x64, name, make):
    _assert_stable(make, jnp.float64)


def test_gradient_at_round_is_correct(x64):
    """At e = 0 the gradient w.r.t. e1, e2 is not just finite but equals finite differences."""
    x = jnp.asarray([0.7, -0.3, 1.5, 0.2])
    y = jnp.asarray([0.4, 1.1, -0.6, -0.9])

    @jax.jit
    def f(e1, e2, gamma):
        ax, ay = EPL(1.2, gamma, e1, e2).deflection(x, y)
        return jnp.sum(ax * jnp.arange(1, 5) + ay**2)

    for gamma in (2.0, 1.8):
        g1, g2 = jax.jit(jax.grad(f, argnums=(0, 1)))(0.0, 0.0, gamma)
        h = 1e-6
        fd1 = (f(h, 0.0, gamma) - f(-h, 0.0, gamma)) / (2 * h)
        fd2 = (f(0.0, h, gamma) - f(0.0, -h, gamma)) / (2 * h)
        np.testing.assert_allclose([g1, g2], [fd1, fd2], rtol=1e-6, atol=1e-8)
    # SIE gradients (series branch below |e| = 1e-3, closed form above) equal EPL(gamma=2)'s
    @jax.jit
    def g_sie_epl(e1, e2):
        def f_sie(p):
            return jnp.sum(jnp.stack(SIE(p[0], p[1], p[2], p[3], p[4]).deflection(x, y)) ** 2)

        def f_epl(p):
            return jnp.sum(jnp.stack(EPL(p[0], 2.0, p[1], p[2], p[3], p[4]).deflection(x, y)) ** 2)

        p = jnp.stack([1.2, e1, e2, 0.1, -0.2])
        return jax.grad(f_sie)(p), jax.grad(f_epl)(p)

    for e1, e2 in ((0.0, 0.0), (5e-4, -2e-4), (0.999e-3, 0.0), (1.001e-3, 0.0), (0.2, 0.1)):
        gs, ge = g_sie_epl(e1, e2)
        np.testing.assert_allclose(gs, ge, rtol=1e-10, atol=1e-12)
    # the pure function is continuous at e = 0 too
    a0 = deflection_sie(x, y, 1.2, 0.0, 0.0)
    a1 = deflection_sie(x, y, 1.2, 1e-9, -1e-9)
    np.testing.assert_allclose(a0, a1, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# transformations
# ---------------------------------------------------------------------------------------------


def test_vmap_over_parameters_and_filter_grad():
    x = jnp.asarray([0.5, -0.8, 1.2])
    y = jnp.asarray([0.9, 0.1, -0.4])
    theta = jnp.asarray([0.8, 1.0, 1.3])
    gammas = jnp.asarray([1.8, 2.0, 2.2])

    def alpha(te, g):
        return EPL(te, g, 0.1, -0.05).deflection(x, y)[0]

    batched = jax.jit(jax.vmap(alpha))(theta, gammas)
    looped = jnp.stack([jax.jit(alpha)(t, g) for t, g in zip(theta, gammas)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6)

    # a batched Module through eqx.filter_vmap
    lenses = jax.vmap(lambda te: SIE(te, 0.1, 0.2))(theta)
    out = eqx.filter_jit(eqx.filter_vmap(lambda lens: lens.deflection(x, y)[1]))(lenses)
    assert out.shape == (3, 3)
    # gradients w.r.t. the Module's fields (they are arrays, so filter_grad sees them)
    grads = eqx.filter_jit(eqx.filter_grad(lambda lens: jnp.sum(lens.ray_shoot(x, y)[0])))(
        SIE(1.0, 0.1, 0.2) + ExternalShear(0.02, 0.01)
    )
    assert np.all(np.isfinite(grads.components[0].e1))
    np.testing.assert_allclose(grads.components[1].gamma1, -jnp.sum(x), rtol=1e-6)
    # jit works and matches eager
    lens = SIE(1.0, 0.1, -0.2)
    np.testing.assert_allclose(eqx.filter_jit(lens.deflection)(x, y)[0], lens.deflection(x, y)[0],
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# validation and helpers
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="ellipticity"):
        SIE(1.0, 0.8, 0.7)
    with pytest.raises(ValueError, match="gamma"):
        EPL(1.0, 3.2, 0.0, 0.0)
    with pytest.raises(ValueError, match="theta_E"):
        SIS(-1.0)
    with pytest.raises(ValueError, match="theta_E"):
        EPL(0.0, 2.0)
    with pytest.raises(ValueError, match="m >= 2|>= 2"):
        Multipole(1, 0.1, 0.0)
    with pytest.raises(ValueError, match="integer"):
        Multipole(2.5, 0.1, 0.0)
    with pytest.raises(ValueError, match="AbstractLens"):
        CompositeLens((SIS(1.0), "shear"))


def test_critical_curves_and_caustics_of_sis():
    lens = SIS(1.0, 0.2, -0.1)
    grid = PixelGrid((40, 40), 0.1)
    critical, caustics = critical_curves_and_caustics(lens, grid, supersampling=4)
    assert len(critical) == 1
    line = critical[0]
    r = np.hypot(line[:, 0] - 0.2, line[:, 1] + 0.1)
    np.testing.assert_allclose(r, 1.0, atol=2e-3)  # linear interpolation on a 0.025" grid
    # the SIS caustic (of the tangential critical curve) is the point at the centre
    # and the caustic points are within |r - theta_E| <= 2e-3 of it
    np.testing.assert_allclose(caustics[0], np.broadcast_to([0.2, -0.1], caustics[0].shape),
                               atol=2e-3)


def test_stability_check_detects_the_naive_form():
    """Negative control: the textbook SIE form (atan2 angle, |e|), which deflection_sie only
    uses for |e| >= 1e-3, gives NaN at e = 0; the stability tests above would catch it."""
    from blindlens.lens_models import _sie_alpha_keeton

    x = jnp.asarray([0.7, -0.3])
    y = jnp.asarray([0.4, 1.1])
    value = _sie_alpha_keeton(x, y, 1.2, 0.0, 0.0)[0]
    grad = jax.grad(lambda e1: jnp.sum(_sie_alpha_keeton(x, y, 1.2, e1, 0.0)[0]))(0.0)
    assert not (np.all(np.isfinite(value)) and np.isfinite(grad))
    # while the library function is finite there
    assert np.isfinite(jax.grad(lambda e1: jnp.sum(deflection_sie(x, y, 1.2, e1, 0.0)[0]))(0.0))
