"""Fields indexed by absolute time (the authors' ex2): the block against a hand-built chain of θ-steps, IFT
gradients against finite differences (gradcheck, float64), TV over all fields, the authors' initial conditions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from irn_core.layers import ThetaLayer
from irn_core.regularizers import tv_penalty
from irn_core.time_indexed import TimeIndexedBlock, TimeIndexedField


def _fields(n, d=2, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(d, 3), nn.Tanh(), nn.Linear(3, d)).double() for _ in range(n)]


def test_block_equals_a_chain_of_steps_with_the_field_of_each_samples_time():
    fields = _fields(8)
    block = TimeIndexedBlock(TimeIndexedField(fields, span=4.0), steps=4, h=0.5, theta=0.5,
                             solver={"name": "anderson", "tol": 1e-12, "max_iter": 200})
    x = torch.randn(3, 2, dtype=torch.float64)
    t0 = torch.tensor([0.0, 0.3, 1.9], dtype=torch.float64)
    y = block(x, t0)
    for i in range(3):  # oracle: sample by sample, the field of ⌊(t0 + kh + θh)/Δ⌋, Δ = 0.5
        yi = x[i:i + 1]
        for k in range(4):
            idx = min(int(np.floor((float(t0[i]) + 0.5 * k + 0.25) / 0.5 + 1e-9)), 7)
            yi = ThetaLayer(fields[idx], theta=0.5, h=0.5, solver={"name": "anderson", "tol": 1e-12, "max_iter": 200})(yi)
        assert torch.allclose(y[i], yi[0], atol=1e-10)


def test_theta_one_evaluates_at_the_left_end_and_theta_zero_is_euler():
    fields = _fields(4)
    tf = TimeIndexedField(fields, span=2.0)
    b1 = TimeIndexedBlock(tf, steps=2, h=0.5, theta=1.0)
    assert torch.equal(b1.eval_time(torch.tensor([0.5])), torch.tensor([0.5]))
    b0 = TimeIndexedBlock(tf, steps=4, h=0.5, theta=0.0)
    x, t0 = torch.randn(2, 2, dtype=torch.float64), torch.tensor([0.0, 0.6], dtype=torch.float64)
    y, want = b0(x, t0), x.clone()
    for k in range(4):
        for i in range(2):
            j = min(int(np.floor((float(t0[i]) + 0.5 * k) / 0.5 + 1e-9)), 3)
            want[i] = want[i] + 0.5 * fields[j](want[i:i + 1])[0]
    assert torch.allclose(y, want)
    assert torch.allclose(b0.explicit_rollout(x, t0, 4)[:, -1], want)


def test_ift_gradients_match_finite_differences():
    fields = _fields(3, seed=1)
    block = TimeIndexedBlock(TimeIndexedField(fields, span=1.5), steps=3, h=0.5, theta=0.5,
                             solver={"name": "anderson", "tol": 1e-13, "max_iter": 300},
                             backward={"name": "direct"})
    t0 = torch.tensor([0.0, 0.2], dtype=torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    params = [p for p in block.parameters()]
    assert torch.autograd.gradcheck(lambda x_, *ps: block(x_, t0), (x, *params), atol=1e-6, rtol=1e-5)


def test_tv_sums_all_consecutive_fields_over_the_steps():
    fields = _fields(5, seed=2)
    block = TimeIndexedBlock(TimeIndexedField(fields, span=5.0), steps=2, h=1.0, theta=0.0)
    want = sum(sum(((b - a) ** 2).sum() for a, b in zip(f.parameters(), g.parameters()))
               for f, g in zip(fields[:-1], fields[1:]))
    assert float(tv_penalty(block, 0.1).detach()) == pytest.approx(0.1 / 2 * float(want.detach()), rel=1e-12)


def test_ex2_authors_initial_conditions_and_targets():
    from bench.tasks import build_task
    from bench.tasks.ode import stiff_solution

    t = build_task({"name": "ex2_stiff", "points": 4, "t0_range": [0.0, 2.0], "z0_range": [-0.5, 1.5],
                    "first_at_origin": True, "n_train": 50, "n_val": 20, "n_test": 20})
    tr, va, te = t.data(10)
    np.random.seed(10)  # the authors' draws (ex_stiff.py:47-66): 50 start times, then 50 values, then validation
    t0, z0 = np.random.rand(50) * 2, 2 * np.random.rand(50) - 0.5
    x, y = tr.tensors
    assert x[0].tolist() == [0.0, 0.0]
    assert np.allclose(x[1:, 1].numpy(), t0[1:], atol=1e-6) and np.allclose(x[1:, 0].numpy(), z0[1:], atol=1e-6)
    vt0 = np.random.rand(20) * 2
    assert np.allclose(va.tensors[0][1:, 1].numpy(), vt0[1:], atol=1e-6)
    for i in (0, 7):
        tj = float(x[i, 1]) + np.arange(1, 5) * 0.5
        assert np.allclose(y[i, :, 0].numpy(), stiff_solution(np.array([float(x[i, 0])]), tj, t0=float(x[i, 1]))[0],
                           atol=1e-6)


@pytest.mark.parametrize("t0", [[0.0], [0.0, 0.2, 1.1]])
def test_steps_differentiate_only_the_fields_in_use_with_the_gradients_of_the_whole_field(t0):
    """A step solves and differentiates TimeIndexedField.active() (the one field, or a view of the used ones): the
    values and the gradients equal those of a step through the whole TimeIndexedField (the oracle: ThetaMethod._step
    given all the fields), and fields no sample touches get no gradient (None, as the authors' code) where the
    whole-field step gave them zeros."""
    fields = _fields(6, seed=2)
    opts = dict(theta=0.5, solver={"name": "anderson", "tol": 1e-13, "max_iter": 300}, backward={"name": "direct"})
    block = TimeIndexedBlock(TimeIndexedField(fields, span=3.0), steps=2, h=0.5, **opts)
    t0 = torch.tensor(t0, dtype=torch.float64)
    x = torch.randn(len(t0), 2, dtype=torch.float64)
    y = block(x, t0)
    y.pow(2).sum().backward()
    got = [None if p.grad is None else p.grad.clone() for p in block.parameters()]
    block.zero_grad(set_to_none=True)
    want_y = x
    for k in range(2):  # the oracle: every step through the whole field
        block.field.set_time(block.eval_time(t0 + k * 0.5))
        want_y = block._step(block.field, want_y, 0.5, [], [])
    want_y.pow(2).sum().backward()
    assert torch.allclose(y, want_y, atol=1e-12)
    used = {min(int(np.floor((float(t) + 0.5 * k + 0.25) / 0.5 + 1e-9)), 5) for t in t0 for k in range(2)}
    for (name, p), g in zip(block.named_parameters(), got):
        k = int(name.split(".")[2])
        if k in used:
            assert g is not None and torch.allclose(g, p.grad, atol=1e-10), name
        else:
            assert g is None and torch.equal(p.grad, torch.zeros_like(p)), name
