"""TradeoffLoss: the weighted cost term, the budget hinge, warm-up and the Lagrangian multiplier."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimtrain
from _helpers import count_macs, dcls


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 2))
    x = torch.randn(4, 6)
    full_macs = count_macs(m, x) / 4  # per item, counted before the model is changed
    slimtrain.make_dynamic(m, x, kappa_min=0.125)
    return m, x, full_macs


def _thetas(m):
    return [d.theta for d in dcls(m).values()]


def test_weighted_term_pushes_widths_down_when_the_task_is_constant():
    m, x, full = _model()
    obj = slimtrain.TradeoffLoss(m, alpha=0.5, metric="macs")
    assert obj.full == pytest.approx(full)
    task = torch.tensor(1.25)
    loss = obj(task)
    assert loss.item() == pytest.approx(1.25 + 0.5)  # full width: cost / full cost = 1
    loss.backward()
    for name, d in dcls(m).items():
        assert d.theta.grad is not None and d.theta.grad.item() > 0, name  # descent lowers theta
    # value at other widths: task + alpha * macs(K) / macs(full), macs(K) by hand
    m[0].dcl.set_width(5.5)
    m[2].dcl.set_width(3.0)
    want = 1.25 + 0.5 * (6 * 5.5 + 5.5 * 3 + 3 * 2) / full
    assert obj(task).item() == pytest.approx(want, rel=1e-6)
    # plain SGD on the penalty alone shrinks every width
    opt = torch.optim.SGD(_thetas(m), lr=0.05)
    before = [float(d.width.detach()) for d in dcls(m).values()]
    for _ in range(5):
        opt.zero_grad()
        obj(task).backward()
        opt.step()
    after = [float(d.width.detach()) for d in dcls(m).values()]
    assert all(a < b for a, b in zip(after, before))


def test_alpha_zero_adds_nothing():
    m, x, _ = _model()
    obj = slimtrain.TradeoffLoss(m, alpha=0.0)
    task = (m(x) ** 2).mean()
    assert obj(task).item() == task.item()


@pytest.mark.parametrize("metric", ["flops", "macs", "params"])
def test_budget_hinge_is_zero_below_and_linear_above(metric):
    m, x, _ = _model()
    m[0].dcl.set_width(8)
    m[2].dcl.set_width(6)
    c = slimtrain.model_cost(m, hard=False).metric(metric).item()
    task = torch.tensor(0.7)
    # below the budget: exactly the task loss, and no gradient to the widths
    under = slimtrain.TradeoffLoss(m, budget=c * 1.01, metric=metric)
    loss = under(task)
    assert loss.item() == task.item()
    loss.requires_grad and loss.backward()
    assert all(t.grad is None or t.grad.item() == 0 for t in _thetas(m))
    # above the budget: mu * (cost / budget - 1), positive, with a gradient that shrinks widths
    over = slimtrain.TradeoffLoss(m, budget=c / 2, metric=metric, mu=3.0)
    loss = over(task)
    assert loss.item() == pytest.approx(0.7 + 3.0 * (2 - 1), rel=1e-6)
    loss.backward()
    assert all(t.grad.item() > 0 for t in _thetas(m))


def test_warmup_holds_widths_at_max():
    m, x, _ = _model()
    for d in dcls(m).values():
        d.set_width(d.min_width)
    obj = slimtrain.TradeoffLoss(m, alpha=1.0, warmup_steps=3)
    m.train()
    for step in range(3):
        loss = obj((m(x) ** 2).mean())
        for d in dcls(m).values():
            assert bool(d._hold)
            assert float(d.width.detach()) == d.max_width
        assert obj.last["penalty"] == 0.0
        loss.backward()
        assert all(t.grad is None or t.grad.item() == 0 for t in _thetas(m))
        # held: train mode is the deterministic full-width model
        with torch.no_grad():
            assert torch.equal(m(x), m(x))
    loss = obj((m(x) ** 2).mean())
    assert not any(bool(d._hold) for d in dcls(m).values())
    assert obj.last["penalty"] == pytest.approx(1.0)


def test_lagrangian_multiplier_grows_while_over_budget():
    m, x, _ = _model()
    c = slimtrain.model_cost(m, hard=False).flops.item()
    budget = c / 4
    obj = slimtrain.TradeoffLoss(m, budget=budget, lagrangian=True, mu=0.0, lr_mu=0.5, rho=2.0)
    opt = torch.optim.SGD(_thetas(m), lr=1e-3)
    mus = [obj.mu.item()]
    for _ in range(4):
        v = slimtrain.model_cost(m, hard=False).flops.item() / budget - 1  # violation before the step
        task = (m(x) ** 2).mean()
        loss = obj(task)
        # augmented Lagrangian with the multiplier from before this step
        assert loss.item() - task.item() == pytest.approx(mus[-1] * v + 0.5 * 2.0 * v * v, rel=1e-5)
        opt.zero_grad()
        loss.backward()  # must not fail after mu was updated in place
        opt.step()
        mus.append(obj.mu.item())
        assert mus[-1] == pytest.approx(mus[-2] + 0.5 * v, rel=1e-5)
    assert all(b > a for a, b in zip(mus, mus[1:]))
    # under the budget the multiplier stays where it is
    under = slimtrain.TradeoffLoss(m, budget=c * 10, lagrangian=True, mu=2.0)
    under(torch.tensor(0.0)).backward()
    assert under.mu.item() == 2.0
    # in eval mode the multiplier is not updated
    obj.eval()
    before = obj.mu.item()
    obj(torch.tensor(0.0))
    assert obj.mu.item() == before


def test_loss_does_not_register_the_model_as_submodule():
    m, x, _ = _model()
    obj = slimtrain.TradeoffLoss(m, alpha=0.1)
    assert list(obj.parameters()) == []


def test_floor_budget_drives_every_width_to_its_floor():
    """budget='floor': the budget is the cost at every width's lower bound, so with the Lagrangian
    multiplier the widths end at (or just above) kappa_min * N: kappa_min is the control."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(64, 8)
    slimtrain.make_dynamic(m, x, kappa_min=0.25)
    obj = slimtrain.TradeoffLoss(m, budget="floor", lagrangian=True, lr_mu=0.5)
    floor = {n: d.min_width for n, d in dcls(m).items()}
    with torch.no_grad():
        for d in dcls(m).values():
            d.set_width(d.min_width)
        at_floor = float(slimtrain.model_cost(m, hard=False).flops)
        for d in dcls(m).values():
            d.set_width(d.max_width)
    assert obj.budget == pytest.approx(at_floor)
    from slimtrain.train.training import make_optimizer

    opt = make_optimizer(m, lr=1e-3, width_lr=2e-2)
    m.train()
    for _ in range(300):
        opt.zero_grad()
        obj((m(x) ** 2).mean()).backward()
        opt.step()
    for n, d in dcls(m).items():
        assert float(d.width.detach()) <= floor[n] + 0.5, (n, float(d.width.detach()), floor[n])
    with pytest.raises(slimtrain.LossConfigError, match="positive number or 'floor'"):
        slimtrain.TradeoffLoss(m, budget="ceiling")
