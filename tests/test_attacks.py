"""Tests of attacks/: PGD (training) and APGD (evaluation). Tiny models only; a few seconds total."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_abstain.analysis.records import EMPIRICAL_COLUMNS
from robust_abstain.attacks import (APGD, ATTACKS, checkpoints, eval_mode, max_other_confidence, per_sample,
                                    pgd, project, worst_case_predictions)
from robust_abstain.attacks.apgd import OBJECTIVES
from robust_abstain.attacks.autoattack import MEMBERS
from robust_abstain.attacks.registry import ROBUSTNESS
from robust_abstain.attacks.apgd_state import Iterates, StepSizeSchedule, Worst
from robust_abstain.errors import ParamError
from robust_abstain.models.nets import build_model

TOL = 1e-5


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    spin-waiting made them up to ~75x slower (measured); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _blobs(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 Gaussian classes in [0, 1]^d."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(3, d, generator=g) * 0.6 + 0.2
    y = torch.randint(0, 3, (n,), generator=g)
    x = (centres[y] + 0.12 * torch.randn(n, d, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP trained for a moment on 3 blobs; returns (model in eval mode, x_test, F(x_test))."""
    torch.manual_seed(0)
    d = 10
    x, y = _blobs(800, d, 0)
    model = build_model("mlp", (d,), 3, mean=[0.5] * d, std=[0.25] * d, width=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    x_te, _ = _blobs(200, d, 1)
    with torch.no_grad():
        pred = model(x_te).argmax(1)
    return model, x_te, pred


@pytest.fixture(scope="module")
def tiny_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An untrained tiny CNN on 1 x 8 x 8 images (exercises the 4-D / channels_last path)."""
    torch.manual_seed(1)
    model = build_model("cnn", (1, 8, 8), 3, mean=[0.5], std=[0.3], width=4).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(40, 1, 8, 8, generator=g)
    x[:5] = x[:5].round()  # points on the [0, 1] boundary
    with torch.no_grad():
        pred = model(x).argmax(1)
    return model, x, pred


def _in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> None:
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (dist <= eps + TOL).all(), dist.max().item()


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _ce(model, y):
    return lambda xa: F.cross_entropy(model(xa), y, reduction="none")


EPS = {"linf": 0.15, "l2": 0.6}


# ----------------------------------------------------------------------------- constraints
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("fixture", ["trained_mlp", "tiny_cnn"])
def test_pgd_stays_in_ball_and_box(norm, fixture, request):
    model, x, pred = request.getfixturevalue(fixture)
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(_ce(model, pred), x, EPS[norm], 10, norm=norm, generator=g)
    _in_ball(x_adv, x, EPS[norm], norm)
    assert not x_adv.requires_grad
    assert (_predict(model, x_adv) == pred).float().mean() < 1  # it does something


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("objective", ["ce", "conf"])
@pytest.mark.parametrize("fixture", ["trained_mlp", "tiny_cnn"])
def test_apgd_stays_in_ball_and_box(norm, objective, fixture, request):
    model, x, pred = request.getfixturevalue(fixture)
    x_adv = APGD(model, norm=norm, eps=EPS[norm], steps=10, objective=objective,
                 batch_size=64).perturb(x, pred)
    _in_ball(x_adv, x, EPS[norm], norm)
    assert x_adv.is_contiguous()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 5, generator=g)
    far = x + 3 * torch.randn(16, 5, generator=g)
    _in_ball(project(far, x, 0.2, norm), x, 0.2, norm)
    inside = project(x + 0.01, x, 0.2, norm)  # already feasible (up to the clamp) -> unchanged
    assert torch.allclose(inside, (x + 0.01).clamp(0, 1))


# ----------------------------------------------------------------------------- eps = 0 / steps = 0
def test_eps_zero_returns_x_and_natural_accuracy(trained_mlp):
    model, x, pred = trained_mlp
    assert torch.equal(pgd(_ce(model, pred), x, 0.0, 10), x)
    assert torch.equal(pgd(_ce(model, pred), x, 0.1, 0), x)
    x_adv = APGD(model, eps=0.0, steps=10).perturb(x, pred)
    assert torch.equal(x_adv, x)
    adv_pred, p_y = worst_case_predictions(model, x, pred, 0.0, steps=10)
    assert torch.equal(adv_pred, pred)  # robust accuracy at eps 0 == natural accuracy
    with torch.no_grad():
        p_nat = F.softmax(model(x), 1).gather(1, pred[:, None]).squeeze(1)
    assert torch.allclose(p_y, p_nat, atol=1e-6)


# ----------------------------------------------------------------------------- strength
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_at_least_as_strong_as_pgd10(trained_mlp, norm):
    model, x, pred = trained_mlp
    eps = {"linf": 0.08, "l2": 0.2}[norm]
    g = torch.Generator().manual_seed(0)
    x_pgd = pgd(_ce(model, pred), x, eps, 10, norm=norm, generator=g)
    rob_pgd = (_predict(model, x_pgd) == pred).float().mean().item()
    x_apgd = APGD(model, norm=norm, eps=eps, steps=40).perturb(x, pred)
    rob_apgd = (_predict(model, x_apgd) == pred).float().mean().item()
    assert 0.05 < rob_pgd < 0.95, "eps should make the comparison informative"
    assert rob_apgd <= rob_pgd


def _linear_two_class(d: int, seed: int):
    """f(x) = [-(w.x+b)/2, (w.x+b)/2]: class 1 iff w.x + b > 0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = 0.3 + 0.4 * torch.rand(300, d, generator=g)  # far from the [0, 1] faces
    b = -(x @ w).median()
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-w / 2, w / 2]))
        lin.bias.copy_(torch.stack([-b / 2, b / 2]))
    return lin.eval(), x, w, b


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_exact_on_linear_model(norm):
    """The minimal adversarial distance of a linear binary classifier is |w.x+b| / ||w||_dual;
    APGD must fool exactly the points closer than eps (outside a 5 % margin)."""
    model, x, w, b = _linear_two_class(20, 0)
    dual = w.abs().sum() if norm == "linf" else w.norm()
    dist = (x @ w + b).abs() / dual
    eps = dist.median().item()
    assert eps < 0.2  # the box [0, 1] never binds
    pred = _predict(model, x)
    adv_pred, _ = worst_case_predictions(model, x, pred, eps, norm=norm, steps=40)
    fooled = adv_pred != pred
    clear = (dist / eps - 1).abs() > 0.05
    assert clear.sum() > 200
    assert torch.equal(fooled[clear], (dist < eps)[clear])


def test_more_restarts_never_weaker(trained_mlp):
    model, x, pred = trained_mlp
    r1 = worst_case_predictions(model, x, pred, 0.06, steps=10, restarts=1)[0]
    r2 = worst_case_predictions(model, x, pred, 0.06, steps=10, restarts=2)[0]
    fooled1, fooled2 = r1 != pred, r2 != pred
    assert (fooled2 | ~fooled1).all()  # restart 0 is the same run; later ones only add


def test_conf_objective_raises_other_class_confidence(trained_mlp):
    model, x, pred = trained_mlp
    x_adv = APGD(model, eps=0.04, steps=20, objective="conf").perturb(x, pred)
    with torch.no_grad():
        before = max_other_confidence(model(x), pred)
        after = max_other_confidence(model(x_adv), pred)
    assert after.mean() > before.mean() + 0.05
    assert ((after >= before - 1e-6).float().mean()) >= 0.95


def test_conf_prediction_and_probability_consistent(trained_mlp):
    model, x, pred = trained_mlp
    adv_pred, p_y = worst_case_predictions(model, x, pred, 0.06, objective="conf", steps=10)
    assert adv_pred.dtype == torch.long and p_y.dtype == torch.float32
    assert ((p_y >= 0) & (p_y <= 1)).all()
    assert (p_y[adv_pred == pred] >= 1 / 3 - 1e-6).all()  # still the argmax among 3 classes


def test_worst_case_predictions_agree_with_points(trained_mlp):
    model, x, pred = trained_mlp
    attack = APGD(model, eps=0.06, steps=10)
    x_adv, logits = attack.run(x, pred)
    with torch.no_grad():
        recomputed = model(x_adv)
    assert torch.allclose(logits, recomputed, atol=1e-4)
    adv_pred, _ = worst_case_predictions(model, x, pred, 0.06, steps=10)
    assert torch.equal(adv_pred, logits.argmax(1))


def test_misclassified_points_are_returned_unchanged(trained_mlp):
    model, x, pred = trained_mlp
    wrong = (pred + 1) % 3
    x_adv = APGD(model, eps=0.06, steps=5).perturb(x, wrong)
    assert torch.equal(x_adv, x)


# ----------------------------------------------------------------------------- side effects
class _ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def test_model_mode_restored_and_no_param_grads():
    rec = _ModeRecorder()
    model = nn.Sequential(rec, nn.Linear(6, 3), nn.Dropout(0.5))
    model.train()
    model[2].eval()  # mixed modes must come back exactly
    x = torch.rand(12, 6)
    y = torch.zeros(12, dtype=torch.long)
    APGD(model, eps=0.1, steps=5).perturb(x, y)
    assert rec.seen and not any(rec.seen)  # eval during the attack
    assert model.training and rec.training and not model[2].training
    assert all(p.grad is None for p in model.parameters())
    # pgd leaves the mode alone and does not touch .grad
    pgd(lambda xa: F.cross_entropy(model(xa), y, reduction="none"), x, 0.1, 3)
    assert model.training and not model[2].training
    assert all(p.grad is None for p in model.parameters())


def test_global_rng_untouched(trained_mlp):
    model, x, pred = trained_mlp
    state = torch.get_rng_state()
    APGD(model, eps=0.06, steps=3).perturb(x, pred)
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_result(trained_mlp, norm):
    model, x, pred = trained_mlp
    a = APGD(model, norm=norm, eps=EPS[norm] / 3, steps=10, seed=3, batch_size=50).perturb(x, pred)
    b = APGD(model, norm=norm, eps=EPS[norm] / 3, steps=10, seed=3, batch_size=50).perturb(x, pred)
    assert torch.equal(a, b)
    p1 = pgd(_ce(model, pred), x, 0.05, 5, norm=norm, generator=torch.Generator().manual_seed(4))
    p2 = pgd(_ce(model, pred), x, 0.05, 5, norm=norm, generator=torch.Generator().manual_seed(4))
    assert torch.equal(p1, p2)


# ----------------------------------------------------------------------------- misc
def test_checkpoints_match_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    ws = checkpoints(40)
    assert ws == sorted(set(ws)) and ws[0] == 9 and ws[-1] <= 40


def test_pgd_minimize_lowers_objective(trained_mlp):
    model, x, pred = trained_mlp
    up = pgd(_ce(model, pred), x, 0.05, 5, maximize=True, random_start=False)
    down = pgd(_ce(model, pred), x, 0.05, 5, maximize=False, random_start=False)
    with torch.no_grad():
        assert _ce(model, pred)(down).mean() < _ce(model, pred)(x).mean() < _ce(model, pred)(up).mean()


def test_pgd_rejects_non_per_sample_objective(trained_mlp):
    model, x, pred = trained_mlp
    with pytest.raises(ValueError, match="per-sample"):
        pgd(lambda xa: F.cross_entropy(model(xa), pred), x, 0.05, 2)


@pytest.mark.parametrize("call, names", [
    (lambda m: pgd(lambda xa: m(xa).sum(1), torch.rand(2, 10), -0.1, 5), "eps"),
    (lambda m: pgd(lambda xa: m(xa).sum(1), torch.rand(2, 10), 0.1, -1), "steps"),
    (lambda m: pgd(lambda xa: m(xa).sum(1), torch.rand(2, 10), 0.1, 5, norm="l1"), "norm"),
    (lambda m: pgd(lambda xa: m(xa).sum(1), torch.rand(2, 10), float("nan"), 5), "eps"),
    (lambda m: pgd(lambda xa: m(xa).sum(1), torch.rand(2, 10), 0.1, 5, step_size=-1.0), "step_size"),
    (lambda m: APGD(m, eps=-0.1), "eps"),
    (lambda m: APGD(m), "eps"),
    (lambda m: APGD(m, eps=0.1, norm="l0"), "norm"),
    (lambda m: APGD(m, eps=0.1, objective="dlr"), "objective"),
    (lambda m: APGD(m, eps=0.1, restarts=0), "restarts"),
    (lambda m: APGD(m, eps=0.1, batch_size=0), "batch_size"),
    (lambda m: APGD(m, eps=0.1, rho=1.5), "rho"),
    (lambda m: APGD(m, eps=0.1, seed=1.5), "seed"),
    (lambda m: APGD(m, eps=0.1).perturb(torch.rand(3, 10), torch.zeros(2, dtype=torch.long)), "y must"),
    (lambda m: worst_case_predictions(m, torch.rand(3, 10), torch.zeros(3, dtype=torch.long), -1.0), "eps"),
])
def test_bad_params_raise_param_error(call, names):
    """One error type, and a message that names the offending argument."""
    model = nn.Linear(10, 3)
    with pytest.raises(ParamError, match=names):
        call(model)


# ----------------------------------------------------------------------------- shared helpers
def test_eval_mode_restores_every_submodule_even_on_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    model[1].eval()
    with eval_mode(model) as m:
        assert m is model and not any(sub.training for sub in model.modules())
    assert model.training and model[0].training and not model[1].training and model[2].training
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert model.training and not model[1].training


def test_per_sample_broadcasts_along_the_batch():
    x = torch.ones(3, 2, 4, 5)
    v = torch.tensor([1.0, 2.0, 3.0])
    assert per_sample(v, x).shape == (3, 1, 1, 1)
    assert torch.equal((x * per_sample(v, x))[:, 1, 2, 3], v)
    assert per_sample(v, torch.ones(3, 7)).shape == (3, 1)
    mask = torch.tensor([True, False, True])
    picked = torch.where(per_sample(mask, x), x, torch.zeros_like(x))
    assert picked.flatten(1).sum(1).tolist() == [40.0, 0.0, 40.0]


def test_attack_registry_fills_exactly_the_attack_columns_of_the_records():
    base = {f"{ATTACKS[a].prefix}_{kind}_{s}x" for a in ("apgd-ce", "apgd-conf")
            for kind in ("pred", "conf") for s in (1, 2)}
    assert base == set(EMPIRICAL_COLUMNS) - {"index", "label", "pred", "conf", "eps"}
    assert ATTACKS["apgd-ce"].objective == "ce" and ATTACKS["apgd-conf"].objective == "conf"
    assert all((a.objective in OBJECTIVES) != (a.member in MEMBERS) for a in ATTACKS.values())
    assert len({a.prefix for a in ATTACKS.values()}) == len(ATTACKS)
    assert ROBUSTNESS == ("apgd-ce", "apgd-t", "fab-t", "square")


# ----------------------------------------------------------------------------- APGD bookkeeping
def _state(n_incr, f_best, f_best_last, halved_last) -> Iterates:
    n = len(n_incr)
    z = torch.zeros(n, 2)
    s = Iterates.start(torch.arange(n), z, torch.zeros(n, dtype=torch.long), z, torch.zeros(n), z, eps=0.1)
    s.n_incr, s.f_best = torch.tensor(n_incr), torch.tensor(f_best)
    s.f_best_last, s.halved_last = torch.tensor(f_best_last), torch.tensor(halved_last)
    return s


def test_step_size_halves_on_the_two_checkpoint_conditions():
    """Checkpoints 22 and 41 of 100 steps, rho = 0.75: at 22, condition (1) needs fewer than
    0.75 * 22 = 16.5 increasing steps; at 41, fewer than 0.75 * 19 = 14.25. Condition (2): not
    halved last time and no growth of the best objective."""
    sched = StepSizeSchedule(checkpoints(100), 100, 0.75)
    s = _state(n_incr=[17.0, 16.0, 17.0, 17.0], f_best=[1.0, 1.0, 1.0, 2.0], f_best_last=[1.0, 0.0, 0.0, 1.0],
               halved_last=[True, False, False, True])
    assert sched.halve(21, s) is None
    assert sched.halve(22, s).tolist() == [False, True, False, False]
    s = _state(n_incr=[15.0, 14.0, 15.0, 15.0], f_best=[1.0, 1.0, 1.0, 1.0], f_best_last=[1.0, 0.0, 1.0, 1.0],
               halved_last=[False, False, True, False])
    assert sched.halve(41, s).tolist() == [True, True, False, True]
    assert StepSizeSchedule(checkpoints(10), 10, 0.75).pending == [w for w in checkpoints(10) if w < 10]


def test_checkpoint_restarts_halved_samples_from_their_best_point():
    s = _state([0.0, 0.0], [5.0, 6.0], [0.0, 0.0], [False, False])
    s.x, s.x_best = torch.zeros(2, 2), torch.ones(2, 2)
    s.grad, s.grad_best = torch.zeros(2, 2), torch.full((2, 2), 3.0)
    s.n_incr += 4
    s.checkpoint(torch.tensor([True, False]))
    assert s.step.tolist() == pytest.approx([0.1, 0.2])
    assert s.x.tolist() == [[1.0, 1.0], [0.0, 0.0]] and s.grad.tolist() == [[3.0, 3.0], [0.0, 0.0]]
    assert s.f.tolist() == [5.0, 0.0] and s.n_incr.tolist() == [0.0, 0.0]
    assert s.halved_last.tolist() == [True, False] and s.f_best_last.tolist() == [5.0, 6.0]
    kept = s.take(torch.tensor([1]))
    assert kept.rows.tolist() == [1] and kept.f_best.tolist() == [6.0]


def test_worst_prefers_misclassified_then_higher_objective():
    w = Worst(torch.zeros(3, 1), torch.zeros(3, 2), fooled=torch.tensor([False, True, False]),
              f=torch.tensor([1.0, 1.0, 1.0]))
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])    # rows 0: fooled; 1, 2: not
    fooled = w.offer(torch.tensor([0, 1, 2]), torch.ones(3, 1), torch.tensor([0.5, 9.0, 2.0]), logits,
                     torch.zeros(3, dtype=torch.long))
    assert fooled.tolist() == [True, False, False]
    assert w.x.flatten().tolist() == [1.0, 0.0, 1.0]    # row 1 stays: fooled beats a higher objective
    assert w.fooled.tolist() == [True, True, False] and w.f.tolist() == [0.5, 1.0, 2.0]
