"""The steering policy: validation, the closed form against the paper's loop, invariants."""
import itertools
import math

import pytest
import torch

from costeer import SteeringParams, closed_form_steer, effective_strength, ftrl_steer


def _logits(seed, batch=3, vocab=500):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, vocab, generator=g) * 3 for _ in range(3)]


def test_defaults_are_the_papers():
    p = SteeringParams()
    assert (p.T, p.eta, p.lam, p.alpha, p.beta) == (20, 10.0, 2.0, 2.0, 1.0)


@pytest.mark.parametrize("kwargs, words", [
    ({"T": 0}, ["T", "[1, 1000]", "0"]),
    ({"T": 1001}, ["T", "[1, 1000]"]),
    ({"T": 2.5}, ["T", "integer"]),
    ({"T": "20"}, ["T", "integer"]),
    ({"eta": 0}, ["eta", "> 0"]),
    ({"lam": -1.0}, ["lam", "> 0"]),
    ({"eta": float("nan")}, ["eta", "finite"]),
    ({"lam": float("inf")}, ["lam", "finite"]),
    ({"alpha": float("nan")}, ["alpha", "finite"]),
    ({"beta": float("-inf")}, ["beta", "finite"]),
    ({"beta": True}, ["beta", "number"]),
])
def test_bad_params_name_the_field_and_range(kwargs, words):
    with pytest.raises(ValueError) as err:
        SteeringParams(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_integral_float_T_is_accepted():
    assert SteeringParams(T=5.0).T == 5


def test_strength_by_hand_T1_T2():
    a, b, lam, eta = 2.0, 1.0, 2.0, 10.0
    c1 = b / (lam + 1 / eta)
    assert effective_strength(SteeringParams(T=1)) == pytest.approx(c1, rel=1e-12)
    c2 = (2 * b + a * c1 + c1 / eta) / (2 * lam + 1 / eta)
    assert effective_strength(SteeringParams(T=2)) == pytest.approx(c2, rel=1e-12)


def test_strength_for_defaults_matches_design_note():
    assert effective_strength(SteeringParams()) == pytest.approx(1.783, abs=5e-4)


def test_strength_grows_without_bound_when_lam_below_alpha():
    assert effective_strength(SteeringParams(lam=0.5)) > 100


GRID = list(itertools.product([1, 2, 5, 20, 100], [0.5, 2.0, 10.0, 20.0], [0.5, 1.0, 2.0, 5.0]))


@pytest.mark.parametrize("T, eta, lam", GRID)
def test_closed_form_equals_step_by_step(T, eta, lam):
    params = SteeringParams(T=T, eta=eta, lam=lam)
    C = effective_strength(params)
    llm, slm, slm_ctx = _logits(T * 1000 + int(eta * 10) + int(lam * 100))
    slow = ftrl_steer(llm, slm, slm_ctx, params)
    fast = closed_form_steer(llm, slm, slm_ctx, params)
    assert fast.shape == slow.shape == llm.shape
    assert torch.allclose(fast.exp(), slow.exp(), atol=1e-5, rtol=0)
    # compare log-probs where probability is not negligible (-inf-like tails are float noise)
    mask = slow > -30
    assert (fast[mask] - slow[mask]).abs().max() <= 1e-4 * max(1.0, C)


@pytest.mark.parametrize("steer", [ftrl_steer, closed_form_steer])
def test_zero_delta_returns_base(steer):
    llm, slm, _ = _logits(7)
    p = steer(llm, slm, slm.clone(), SteeringParams())
    assert torch.allclose(p, torch.log_softmax(llm, -1), atol=1e-5)


@pytest.mark.parametrize("steer", [ftrl_steer, closed_form_steer])
def test_output_is_normalized(steer):
    p = steer(*_logits(3), SteeringParams(T=7, eta=3.0, lam=1.5))
    assert torch.allclose(torch.logsumexp(p, -1), torch.zeros(p.shape[0]), atol=1e-5)


def test_steering_moves_mass_towards_delta():
    llm = torch.zeros(1, 4)
    slm = torch.zeros(1, 4)
    slm_ctx = torch.tensor([[0.0, 0.0, 3.0, 0.0]])
    p = closed_form_steer(llm, slm, slm_ctx).exp()[0]
    assert int(p.argmax()) == 2 and p[2] > 0.9


def test_shape_mismatch_is_a_value_error():
    a = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="same shape"):
        ftrl_steer(a, torch.zeros(2, 11), a)
    with pytest.raises(ValueError, match="same shape"):
        closed_form_steer(a, a, torch.zeros(1, 10))
    with pytest.raises(ValueError, match="2-D"):
        closed_form_steer(torch.zeros(10), torch.zeros(10), torch.zeros(10))


def test_half_precision_inputs_are_steered_in_float32():
    llm, slm, ctx = (x.half() for x in _logits(11))
    assert closed_form_steer(llm, slm, ctx).dtype == torch.float32
    assert math.isfinite(float(ftrl_steer(llm, slm, ctx).sum()))
