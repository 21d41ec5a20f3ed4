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


def _anderson_reference(g, y0, m, lam, beta, iters):
    """Textbook type-II Anderson, one sample at a time in float64, the Gram matrix recomputed from scratch every
    iteration (what the incremental solver must reproduce): the iterates' residual norms."""
    out = []
    for b in range(y0.shape[0]):
        gb = lambda v, b=b: g(v.expand(y0.shape[0], -1))[b]  # noqa: E731  (g acts per sample)
        X, Fs, norms = [y0[b]], [gb(y0[b])], []
        for k in range(iters):
            Gs = [f - x for f, x in zip(Fs[-m:], X[-m:])]
            if k == 0:
                x = Fs[-1] if beta == 1.0 else X[-1] + beta * Gs[-1]
            else:
                Gm = torch.stack(Gs)
                GG = Gm @ Gm.T
                n = len(Gs)
                H = torch.zeros(n + 1, n + 1, dtype=D)
                H[0, 1:] = H[1:, 0] = 1.0
                H[1:, 1:] = GG + (lam + torch.finfo(D).eps) * GG.diagonal().max() * torch.eye(n, dtype=D)
                rhs = torch.zeros(n + 1, dtype=D)
                rhs[0] = 1.0
                a = torch.linalg.solve(H, rhs)[1:]
                x = a @ torch.stack(Fs[-m:]) - (1 - beta) * (a @ Gm)
            X.append(x)
            Fs.append(gb(x))
            norms.append(float((Fs[-1] - x).norm()))
        out.append(norms)
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_anderson_incremental_gram_matches_the_textbook_recomputation(beta):
    """The solver updates ⟨G_i, G_j⟩ one row per iteration and reads ‖r‖ off its diagonal; a from-scratch float64
    reference (per sample, GGᵀ recomputed) must give the same residual after every iteration (ring buffer wrapped:
    12 iterations with memory 3)."""
    d, B, m = 7, 3, 3
    A = _contractive(d, 0.95, seed=3)
    x = torch.randn(B, d, dtype=D)
    g = lambda y: x + torch.tanh(y @ A.T)  # noqa: E731  (per sample: row b only touches x[b])
    y0 = x.clone()
    _, st = get_nonlinear("anderson")(g, y0, tol=0.0, max_iter=12, m=m, lam=1e-8, beta=beta)
    ref = _anderson_reference(g, y0, m, 1e-8, beta, 12)
    assert st.iterations == 12 and st.stop == "max_iter"
    torch.testing.assert_close(torch.tensor(st.history, dtype=D), ref.max(dim=0).values, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("name", ["fixed_point", "anderson", "picard_average", "lbfgs", "newton_krylov"])
def test_returned_iterate_is_the_one_whose_residual_is_reported(name):
    """The best iterate is kept by reference (no copy when every sample improves, a where-merge when some do): the
    returned y must be the iterate whose residual the stats report — recomputed from g, sample by sample — in a batch
    where one sample converges at once and another never does (stiff for Picard-type solvers)."""
    g_stiff, y_stiff = _stiff_problem(B=2, d=4)
    x_easy = torch.randn(2, 4, dtype=D)
    A = _contractive(4, 0.3)

    def g(y):
        return torch.cat([g_stiff(y[:2]), x_easy + torch.tanh(y[2:] @ A.T)])

    y0 = torch.cat([y_stiff, x_easy])
    y, st = get_nonlinear(name)(g, y0, tol=1e-9, max_iter=15)
    recomputed = (g(y) - y).norm(dim=1)
    torch.testing.assert_close(recomputed, st.residual, rtol=1e-6, atol=1e-12)
    assert bool((st.residual <= st.init_residual + 1e-15).all())
    assert len(st.history) == len([h for h in st.history if math.isfinite(h)])


def test_stop_reasons_and_the_stagnation_stop():
    """stats.stop says what ended the solve: tol met, out of iterations, no progress for ``stall`` iterations, or a
    sample that blew up while the others converged."""
    x = torch.randn(3, 4, dtype=D)
    A = _contractive(4, 0.5)
    contract = lambda y: x + y @ A.T  # noqa: E731
    _, st = get_nonlinear("fixed_point")(contract, x, tol=1e-10, max_iter=200)
    assert st.stop == "converged" and st.all_converged
    _, st = get_nonlinear("fixed_point")(contract, x, tol=1e-10, max_iter=3)
    assert st.stop == "max_iter" and st.iterations == 3
    shift = lambda y: y + 1.0  # noqa: E731  (no fixed point: the residual never moves)
    for name in ("fixed_point", "anderson", "picard_average"):
        _, st = get_nonlinear(name)(shift, x, tol=1e-6, max_iter=100, stall=4)
        assert st.stop == "stalled" and st.iterations == 4, (name, st.stop, st.iterations)
        _, st = get_nonlinear(name)(shift, x, tol=1e-6, max_iter=30)
        assert st.stop == "max_iter" and st.iterations == 30
    # a slowly but steadily converging solve is never called stalled (it lowers its residual by > 1 % each time)
    slow = lambda y: x + 0.97 * y  # noqa: E731
    _, st = get_nonlinear("fixed_point")(slow, x, tol=1e-3, max_iter=1000, stall=2)
    assert st.stop == "converged"
    # one sample overflows (its map doubles it), the others converge
    blow = lambda y: torch.cat([2.0 * y[:1] + 1e300, contract(y)[1:]])  # noqa: E731
    _, st = get_nonlinear("fixed_point")(blow, x, tol=1e-10, max_iter=200)
    assert st.stop == "diverged" and bool(st.converged[1:].all()) and not bool(st.converged[0])


def test_neutral_options_leave_the_canonical_record_and_so_every_spec_hash_unchanged():
    spec = NONLINEAR_SOLVERS.resolve({"name": "anderson", "tol": 1e-5})
    assert "stall" not in spec.full() and "stall" not in NONLINEAR_SOLVERS.resolve(
        {"name": "anderson", "stall": 0}).full()
    assert NONLINEAR_SOLVERS.resolve({"name": "anderson", "stall": 5}).full()["stall"] == 5
    with pytest.raises(ValueError, match="stall must be an integer >= 0"):
        get_nonlinear("fixed_point")(lambda y: y, torch.zeros(1, 2), stall=-1)


@pytest.mark.parametrize("restart", [3, 40])
def test_gmres_cgs2_solves_an_ill_conditioned_nonsymmetric_system(restart):
    """CGS2 + host Givens: on a nonsymmetric system with condition number ~1e6 (float64) GMRES without restarts
    reaches the direct solution, and the stats say why it stopped."""
    d, B = 40, 2
    g = torch.Generator().manual_seed(5)
    Q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=D))
    Q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=D))
    M = Q1 @ torch.diag(torch.logspace(0, -6, d, dtype=D)) @ Q2
    b = torch.randn(B, d, generator=g, dtype=D)
    x, st = get_linear("gmres")(lambda v: v @ M.T, b, tol=1e-10, max_iter=200 if restart == 40 else 30,
                                restart=restart)
    exact = torch.linalg.solve(M, b.T).T
    if restart == 40:
        assert st.stop == "converged", (st.stop, st.max_residual)
        torch.testing.assert_close(x, exact, rtol=1e-3, atol=0)  # κ = 1e6: forward error ≤ κ·residual
    else:
        assert st.stop == "max_iter" and st.iterations == 30  # GMRES(3) cannot solve it in 30 products


def _rosenbrock(z):  # a curved valley: the strong-Wolfe zoom phase and curvature rejections both occur
    x = z.view(-1, 2)
    return (100 * (x[:, 1] - x[:, 0] ** 2) ** 2 + (1 - x[:, 0]) ** 2).sum()


def _quartic(z):  # ill-conditioned, 12 unknowns: the history wraps around at history_size 3
    w = torch.linspace(0.1, 10.0, z.numel(), dtype=z.dtype)
    return (w * z ** 2).sum() + 0.1 * (z ** 4).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("line_search", ["strong_wolfe", None])
@pytest.mark.parametrize("case", [
    (_rosenbrock, torch.tensor([-1.2, 1.0, 0.5, -0.3]), {"max_iter": 60, "history_size": 10}),
    (_quartic, torch.linspace(-2, 3, 12), {"max_iter": 40, "history_size": 3}),
    (_quartic, torch.linspace(-2, 3, 12), {"max_iter": 200, "history_size": 5, "tolerance_change": 1e-4}),
    (_rosenbrock, torch.tensor([-1.2, 1.0]), {"max_iter": 50, "max_eval": 9}),
], ids=["rosenbrock", "quartic-wrap", "quartic-tolchange", "max-eval"])
def test_lbfgs_driver_is_torch_lbfgs_iterate_for_iterate(case, line_search, dtype):
    """The lean driver under ``lbfgs`` against ``torch.optim.LBFGS`` itself (the oracle): every closure point and the
    final point bitwise equal, and the same iteration count, with and without the line search, in both dtypes."""
    from irn_core.solvers.nonlinear import _lbfgs_run

    f, x0, opts = case
    x0 = x0.to(dtype)
    opts = {"lr": 1.0 if line_search else 0.1, "max_iter": 20, "max_eval": None, "tolerance_grad": 1e-7,
            "tolerance_change": 1e-9, "history_size": 10, **opts}
    opts["max_eval"] = opts["max_eval"] or opts["max_iter"] * 5 // 4
    p = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], line_search_fn=line_search, **opts)
    theirs = []

    def closure():
        opt.zero_grad()
        theirs.append(p.detach().clone())
        loss = f(p)
        loss.backward()
        return loss

    opt.step(closure)
    ours, state = [], {}

    def fg(x):
        ours.append(x.clone())
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = f(z)
        return float(loss), torch.autograd.grad(loss, z)[0]

    with torch.no_grad():
        x = _lbfgs_run(fg, x0.clone(), line_search=line_search, state=state, **opts)
    assert len(theirs) == len(ours) >= 3
    for a, b in zip(theirs, ours):
        assert torch.equal(a, b)
    assert torch.equal(x, p.detach())
    assert state["n_iter"] == opt.state[p]["n_iter"]


@pytest.mark.parametrize("dtype", [torch.float32, D])
def test_gmres_grown_basis_gives_the_iterates_of_a_basis_allocated_whole(monkeypatch, dtype):
    """The Krylov basis starts with room for GMRES_FIRST_BLOCK vectors and grows (one copy) only when a cycle needs
    more: solves that stop inside the first block, cross it and restart give bitwise the same solution, residuals and
    history whatever the first block's size (1, the default 8, or the whole cycle up front, the former layout)."""
    import irn_core.solvers.linear as linear

    g = torch.Generator().manual_seed(3)
    B, d = 4, 60
    results = {}
    for first in (1, linear.GMRES_FIRST_BLOCK, 10**6):
        monkeypatch.setattr(linear, "GMRES_FIRST_BLOCK", first)
        out = []
        for rho, restart, max_iter in ((0.05, 20, 50), (0.3, 20, 50), (0.99, 6, 40)):
            M = torch.randn(d, d, generator=torch.Generator().manual_seed(int(rho * 100)), dtype=dtype)
            M = rho * M / torch.linalg.matrix_norm(M, 2)
            b = torch.randn(B, d, generator=g.manual_seed(7), dtype=dtype)
            x, st = get_linear("gmres")(lambda v: v - v @ M.T, b, tol=1e-7, max_iter=max_iter, restart=restart)
            out.append((x, st.residual, st.history, st.iterations))
        results[first] = out
    iters = [o[3] for o in results[10**6]]
    assert iters[0] < 8 < iters[1] <= 20 < iters[2], iters  # inside the first block, across it, with restarts
    for first, out in results.items():
        for (x, res, hist, it), (x0, res0, hist0, it0) in zip(out, results[10**6]):
            assert torch.equal(x, x0) and torch.equal(res, res0) and hist == hist0 and it == it0, first
