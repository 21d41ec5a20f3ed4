"""Nonlinear and linear solvers against direct solves; registry errors; stats bookkeeping."""
import math
import pytest
import torch

from irn_core.solvers import (
    LINEAR_SOLVERS,
    NONLINEAR_SOLVERS,
    SolverError,
    get_linear,
    get_nonlinear,
)

D = torch.float64


def _contractive(d, norm, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, generator=g, dtype=D)
    return M * (norm / torch.linalg.matrix_norm(M, ord=2))


@pytest.mark.parametrize("theta", [0.5, 1.0])
@pytest.mark.parametrize("name", NONLINEAR_SOLVERS.names())
def test_nonlinear_solvers_hit_closed_form_linear_fixed_point(name, theta):
    """y = (I − hθA)⁻¹(I + h(1−θ)A)x for F(y) = Ay (SPEC §1)."""
    d, B, h = 6, 4, 1.0
    A = _contractive(d, 0.8)
    x = torch.randn(B, d, dtype=D)
    g = lambda y: x + h * ((1 - theta) * x + theta * y) @ A.T  # noqa: E731
    y0 = x + h * x @ A.T
    y, st = get_nonlinear(name)(g, y0, tol=1e-10, max_iter=300)
    I = torch.eye(d, dtype=D)
    exact = torch.linalg.solve(I - h * theta * A, (I + h * (1 - theta) * A) @ x.T).T
    assert st.all_converged, (name, st.max_residual)
    torch.testing.assert_close(y, exact, atol=1e-8, rtol=0)
    assert st.residual.shape == (B,) and st.converged.shape == (B,)
    assert st.nfe >= st.iterations >= 1 and st.wall_time > 0


def _stiff_problem(B=3, d=4):
    """θ·h·Lip(F) = 2.5: F(y) = −5 tanh(y), θ = 0.5, h = 1, small x (Picard's map has slope ≈ −2.5)."""
    theta, h = 0.5, 1.0
    x = 0.05 * torch.randn(B, d, dtype=D)
    F = lambda y: -5.0 * torch.tanh(y)  # noqa: E731
    g = lambda y: x + h * F((1 - theta) * x + theta * y)  # noqa: E731
    return g, x + h * F(x)


def test_stiff_fixed_point_reports_nonconvergence():
    g, y0 = _stiff_problem()
    y, st = get_nonlinear("fixed_point")(g, y0, tol=1e-8, max_iter=100)
    assert not st.all_converged
    assert not bool(st.converged.any())
    assert st.iterations == 100
    # the lowest-residual iterate is returned: never worse than the initial guess
    assert bool((st.residual <= st.init_residual).all())


@pytest.mark.parametrize("name", ["newton_krylov", "lbfgs", "anderson"])
def test_stiff_newton_lbfgs_anderson_converge(name):
    g, y0 = _stiff_problem()
    y, st = get_nonlinear(name)(g, y0, tol=1e-9, max_iter=200)
    assert st.all_converged, (name, st.max_residual)
    torch.testing.assert_close(g(y), y, atol=1e-8, rtol=0)


def test_damped_fixed_point_converges_where_plain_diverges():
    g, y0 = _stiff_problem()
    _, st = get_nonlinear("fixed_point")(g, y0, tol=1e-9, max_iter=300, damping=0.3)
    assert st.all_converged


def test_solve_skipped_when_initial_guess_meets_tol():
    x = torch.randn(2, 3, dtype=D)
    for name in NONLINEAR_SOLVERS.names():
        y, st = get_nonlinear(name)(lambda y: x, x.clone(), tol=1e-8, max_iter=10)
        assert st.iterations == 0 and st.nfe == 1, name
        torch.testing.assert_close(y, x)


def test_per_sample_convergence_and_relative_mode():
    # sample scales differ by 1e6: absolute tol on the big one is hard, relative is not
    A = 0.5 * torch.eye(3, dtype=D)  # residual halves each Picard step
    x = torch.randn(2, 3, dtype=D) * torch.tensor([[1.0], [1e6]], dtype=D)
    g = lambda y: x + y @ A.T  # noqa: E731
    _, st_abs = get_nonlinear("fixed_point")(g, x, tol=1e-6, max_iter=30)
    _, st_rel = get_nonlinear("fixed_point")(g, x, tol=1e-6, max_iter=30, mode="rel")
    assert st_abs.converged.tolist() == [True, False]
    assert st_abs.residual[1] > 1e-6 and st_abs.iterations == 30
    assert st_rel.all_converged and st_rel.mode == "rel"


def test_anderson_singular_history_is_safe():
    """1-D state with memory 5: GGᵀ has rank 1; the regularised bordered system must stay finite."""
    x = torch.tensor([[0.3], [-2.0]], dtype=D)
    g = lambda y: x + 0.5 * torch.cos(y)  # noqa: E731
    y, st = get_nonlinear("anderson")(g, x, tol=1e-12, max_iter=100, m=5, lam=0.0)
    assert st.all_converged and torch.isfinite(y).all()
    # exactly repeated iterates: constant map after convergence
    y2, st2 = get_nonlinear("anderson")(lambda y: torch.ones_like(y), torch.zeros(3, 4, dtype=D), tol=1e-12, max_iter=10)
    torch.testing.assert_close(y2, torch.ones(3, 4, dtype=D))


def test_nonfinite_map_raises_solver_error():
    x = torch.randn(2, 3)
    for name in NONLINEAR_SOLVERS.names():
        with pytest.raises(SolverError, match="NaN"):
            get_nonlinear(name)(lambda y: y * float("nan"), x, tol=1e-6, max_iter=5)


def test_divergence_is_reported_not_raised():
    x = torch.ones(2, 3)
    y, st = get_nonlinear("fixed_point")(lambda y: x + 10.0 * y, x, tol=1e-6, max_iter=200)
    assert not st.all_converged and torch.isfinite(y).all()


def test_registry_errors_list_valid_choices():
    with pytest.raises(ValueError, match=r"unknown nonlinear solver 'broyden'; valid: anderson, fixed_point, lbfgs, nemon_average, newton_krylov"):
        NONLINEAR_SOLVERS.resolve("broyden")
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'memory' for nonlinear solver 'anderson'; valid: .*\bm\b"):
        NONLINEAR_SOLVERS.resolve({"name": "anderson", "memory": 5})
    with pytest.raises(ValueError, match=r"unknown linear solver 'cg'; valid: direct, gmres, neumann"):
        LINEAR_SOLVERS.resolve({"name": "cg"})
    with pytest.raises(ValueError, match="needs a 'name'"):
        LINEAR_SOLVERS.resolve({"tol": 1e-3})
    spec = LINEAR_SOLVERS.resolve({"name": "gmres", "restart": 5})
    assert spec.to_dict() == {"name": "gmres", "restart": 5}


# ---------------------------------------------------------------- linear solvers


def _linear_problem(B=3, n=12, norm=0.7, seed=1):
    Ms = torch.stack([_contractive(n, norm, seed + i) for i in range(B)])
    A = lambda v: v - torch.einsum("bij,bj->bi", Ms, v)  # noqa: E731
    b = torch.randn(B, n, dtype=D)
    exact = torch.linalg.solve(torch.eye(n, dtype=D) - Ms, b)
    return A, b, exact


@pytest.mark.parametrize("name,opts", [("neumann", {"max_iter": 200}), ("gmres", {"restart": 5, "max_iter": 200}),
                                       ("gmres", {"restart": 20, "max_iter": 50}), ("direct", {})])
def test_linear_solvers_match_direct_solve(name, opts):
    A, b, exact = _linear_problem()
    v, st = get_linear(name)(A, b, tol=1e-11, **opts)
    torch.testing.assert_close(v, exact, atol=1e-9, rtol=0)
    assert st.all_converged and st.residual.shape == (3,)


def test_gmres_nonsymmetric_without_contraction_and_zero_rhs():
    """GMRES needs no contraction (Neumann does); a zero right-hand side gives zero."""
    n = 10
    g = torch.Generator().manual_seed(3)
    M = torch.randn(2, n, n, generator=g, dtype=D) * 0.6  # spectral radius > 1
    Amat = torch.eye(n, dtype=D) - M
    A = lambda v: torch.einsum("bij,bj->bi", Amat, v)  # noqa: E731
    b = torch.randn(2, n, dtype=D)
    b[1] = 0.0
    v, st = get_linear("gmres")(A, b, tol=1e-10, max_iter=n + 2, restart=n + 2)
    exact = torch.linalg.solve(Amat, b)
    torch.testing.assert_close(v, exact, atol=1e-8, rtol=0)
    _, st_n = get_linear("neumann")(A, b, tol=1e-10, max_iter=30)
    assert not bool(st_n.converged[0])

@pytest.mark.parametrize("mode", ["rel", "abs"])
def test_gmres_is_scale_invariant_for_tiny_right_hand_sides(mode):
    """Gradients of 1e-30 reach the backward solve in training (ex2, batch 1): GMRES must solve them
    as it solves b of norm 1 — in float32, below sqrt(finfo.tiny) ~ 1e-19 it used to stall at
    relative residual ~1 for every iteration."""
    n = 6
    g = torch.Generator().manual_seed(5)
    Amat = (torch.eye(n) + 0.3 * torch.randn(n, n, generator=g)).expand(4, n, n)
    A = lambda v: torch.einsum("bij,bj->bi", Amat, v)  # noqa: E731
    b1 = torch.randn(1, n, generator=g)
    b = torch.cat([b1, b1 * 1e-20, b1 * 1e-30, b1 * 1e-37])
    v, st = get_linear("gmres")(A, b, tol=1e-5, max_iter=3 * n, restart=n, mode=mode)
    exact = torch.linalg.solve(Amat.double(), b.double()[..., None])[..., 0]
    assert st.all_converged and st.iterations <= n + 1
    if mode == "abs":  # an absolute tolerance is met by v = 0 for the tiny rows: only row 0 is checked
        exact, v = exact[:1], v[:1]
    scale = b.double()[: len(v)].norm(dim=1, keepdim=True)
    assert ((v.double() - exact).norm(dim=1, keepdim=True) / scale).max() < 1e-4


def test_direct_refuses_large_states():
    with pytest.raises(SolverError, match="max_dim"):
        get_linear("direct")(lambda v: v, torch.ones(1, 50), max_dim=10)


def test_anderson_survives_samples_that_diverge():
    """One sample blows up to inf/NaN, the other converges: no linear-algebra error, the finite best
    iterate is returned for the diverged sample and it is reported unconverged."""
    x = torch.tensor([[0.5], [3.0]], dtype=torch.float32)

    def g(y):
        out = x + 0.5 * torch.tanh(y)
        return torch.cat([out[:1], torch.exp(torch.exp(y[1:]))])  # second sample: fast blow-up

    y, st = get_nonlinear("anderson")(g, x.clone(), tol=1e-6, max_iter=50)
    assert torch.isfinite(y).all()
    assert st.converged.tolist() == [True, False]


def test_gmres_scaling_is_exact():
    """The internal rescaling is by a power of two, so GMRES on b·2^k is bit-for-bit GMRES on b times 2^k:
    results (and committed reports) do not move with the scale of the right-hand side."""
    n = 8
    g = torch.Generator().manual_seed(7)
    Amat = torch.eye(n) + 0.2 * torch.randn(2, n, n, generator=g)
    A = lambda v: torch.einsum("bij,bj->bi", Amat, v)  # noqa: E731
    b = torch.randn(2, n, generator=g)
    v, st = get_linear("gmres")(A, b, tol=1e-6, max_iter=6, restart=3)
    for k in (-100, -3, 5):
        vk, stk = get_linear("gmres")(A, torch.ldexp(b, torch.tensor(k)), tol=1e-6, max_iter=6, restart=3)
        assert torch.equal(torch.ldexp(vk, torch.tensor(-k)), v)
        assert torch.equal(stk.residual, st.residual) and stk.iterations == st.iterations


def test_rms_mode_is_the_root_mean_square_entry_and_the_default_converges_on_a_large_float32_state():
    """‖r‖/√n per sample (oracle: the formula on the flattened residual). On a 16×32×32 float32 state the old
    default (1e-6 on ‖r‖) sits below float32's floor and never converges; the default (1e-5 rms) does."""
    from irn_core.layers import DEFAULT_SOLVER
    from irn_core.solvers.base import residual_norm

    r = torch.randn(3, 4, 5, dtype=D)
    torch.testing.assert_close(residual_norm(r, r, "rms"), r.reshape(3, -1).norm(dim=1) / math.sqrt(20))
    torch.manual_seed(0)
    b = torch.rand(2, 16, 32, 32) * 4

    def g(y):  # a contraction with fixed point 2b, computed in float32
        return 0.5 * y + b

    _, old = get_nonlinear("anderson")(g, torch.zeros_like(b), tol=1e-6, max_iter=100)
    _, new = NONLINEAR_SOLVERS.resolve(DEFAULT_SOLVER)(g, torch.zeros_like(b))
    assert new.all_converged and new.iterations < 20, new.iterations
    assert not old.all_converged and old.iterations == 100  # stuck at float32's floor (‖r‖ ≈ 6–8e-6)
