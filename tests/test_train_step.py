"""One optimizer step (train_step.train_step) does what the hand-written loop does.

Every training loop of the package trains through ``train_step``, so these tests
compare it, value by value, with the few lines it replaces: forward, backward,
(unscale, clip,) step, zero_grad.  AdamW's first moment after one step is
``(1 - beta1) * gradient``, so comparing optimizer states compares gradients too
(AdamW's first update alone hardly depends on the gradient's size).
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from mae_from_scratch.precision import choose_precision
from mae_from_scratch.train_step import NonFiniteLossError, StepResult, train_step


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def _data(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)


def _mse(model):
    """A loss_fn: the mean squared error of one ``(x, y)`` micro-batch."""
    return lambda batch: nn.functional.mse_loss(model(batch[0]), batch[1])


def _f32(value: float) -> float:
    """``value`` rounded to float32: the step reports its loss in float32, whatever the model's dtype."""
    return torch.tensor(value, dtype=torch.float32).item()


def _adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05)


def _assert_same_weights_and_state(model_a, opt_a, model_b, opt_b):
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-10, atol=1e-14)


def test_one_step_equals_forward_backward_step_by_hand():
    x, y = _data()
    ours, theirs = _model(), _model()
    opt_ours, opt_theirs = _adamw(ours), _adamw(theirs)

    loss = nn.functional.mse_loss(theirs(x), y)
    loss.backward()
    opt_theirs.step()
    opt_theirs.zero_grad(set_to_none=True)

    res = train_step(ours, opt_ours, _mse(ours), [(x, y)])
    assert isinstance(res, StepResult)
    assert res.loss == _f32(loss.item())  # the loss before the step, as a Python float
    torch.testing.assert_close(res.output, loss.detach())
    _assert_same_weights_and_state(ours, opt_ours, theirs, opt_theirs)
    # Gradients are dropped after the step (set to None, not zeroed), as zero_grad(set_to_none=True).
    assert all(p.grad is None for p in ours.parameters())
    assert all(len(opt_ours.state[p]) == 3 for p in ours.parameters())  # one AdamW step was taken


def test_two_micro_batches_equal_one_step_on_the_whole_batch():
    # With a mean loss and equal halves, the mean of the halves' gradients is the whole batch's
    # gradient: accumulation divides each micro-batch's loss by the number of micro-batches.
    x, y = _data(8)
    ours, theirs = _model(), _model()
    opt_ours, opt_theirs = _adamw(ours), _adamw(theirs)
    whole = train_step(theirs, opt_theirs, _mse(theirs), [(x, y)])
    halves = train_step(ours, opt_ours, _mse(ours), [(x[:4], y[:4]), (x[4:], y[4:])])
    _assert_same_weights_and_state(ours, opt_ours, theirs, opt_theirs)
    # The reported loss is the mean of the micro-batches' losses: the whole batch's loss.
    assert halves.loss == pytest.approx(whole.loss, rel=1e-6)
    assert all(p.grad is None for p in ours.parameters())


def test_three_micro_batches_report_their_mean_loss_and_the_last_output():
    x, y = _data(6)
    model = _model()
    seen = []

    def loss_fn(batch):
        k, xb, yb = batch
        seen.append(k)
        loss = nn.functional.mse_loss(model(xb), yb)
        return loss, f"output of micro-batch {k}"

    batches = [(k, x[2 * k:2 * k + 2], y[2 * k:2 * k + 2]) for k in range(3)]
    expected = [nn.functional.mse_loss(model(xb), yb).item() for _, xb, yb in batches]
    res = train_step(model, _adamw(model), loss_fn, batches)
    assert seen == [0, 1, 2]
    assert res.output == (res.output[0], "output of micro-batch 2")  # the last micro-batch's tuple
    assert res.loss == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_the_loss_is_the_first_item_of_a_tuple_or_list():
    x, y = _data()
    for wrap in (tuple, list):
        ours, theirs = _model(), _model()
        opt_ours, opt_theirs = _adamw(ours), _adamw(theirs)
        # The second item is a tensor that depends on the weights too: using it would train on it.
        res = train_step(ours, opt_ours, lambda b: wrap([nn.functional.mse_loss(ours(b[0]), b[1]), ours(b[0]).sum()]),
                         [(x, y)])
        train_step(theirs, opt_theirs, _mse(theirs), [(x, y)])
        _assert_same_weights_and_state(ours, opt_ours, theirs, opt_theirs)
        assert isinstance(res.output, wrap) and res.loss == _f32(res.output[0].item())


class _SyncRecorder(nn.Module):
    """A model with DDP's ``no_sync``: records, per forward pass, whether it ran inside it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.in_no_sync = False
        self.forwards = []

    @contextlib.contextmanager
    def no_sync(self):
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False

    def forward(self, x):
        self.forwards.append(self.in_no_sync)
        return self.inner(x)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ddp_skips_the_gradient_all_reduce_on_all_but_the_last_micro_batch(n):
    x, y = _data(2 * n)
    model = _SyncRecorder(_model())
    train_step(model, _adamw(model), _mse(model), [(x[2 * k:2 * k + 2], y[2 * k:2 * k + 2]) for k in range(n)])
    assert model.forwards == [True] * (n - 1) + [False]


def test_no_micro_batch_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="at least one micro-batch"):
        train_step(model, _adamw(model), _mse(model), [])


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_a_nan_loss_raises_and_leaves_weights_unchanged_and_gradients_cleared():
    x, y = _data()
    model = _model()
    opt = _adamw(model)
    before = _weights(model)
    with pytest.raises(NonFiniteLossError, match="the loss is nan at epoch 3, step 12"):
        train_step(model, opt, lambda b: nn.functional.mse_loss(model(b[0]), b[1]) * float("nan"), [(x, y)],
                   where="epoch 3, step 12")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # cleared, not left for the next step to add to
    assert not opt.state  # no optimizer step was taken
    # Without ``where`` the message names no place; one infinite micro-batch of two is enough.
    with pytest.raises(NonFiniteLossError, match=r"the loss is inf; stopping"):
        train_step(model, opt, lambda b: b[0] * nn.functional.mse_loss(model(b[1][0]), b[1][1]),
                   [(1.0, (x, y)), (float("inf"), (x, y))])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_reduce_is_applied_before_the_finiteness_decision():
    x, y = _data()
    model = _model()
    opt = _adamw(model)
    local = nn.functional.mse_loss(model(x), y).item()
    # Another rank's loss was NaN: this rank's own loss is finite, but every rank must stop.
    before = _weights(model)
    with pytest.raises(NonFiniteLossError):
        train_step(model, opt, _mse(model), [(x, y)], reduce=lambda v: float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    # The reduced value is the one reported.
    seen = []
    res = train_step(model, opt, _mse(model), [(x, y)], reduce=lambda v: seen.append(v) or 2 * v)
    assert seen == [_f32(local)]
    assert res.loss == 2 * _f32(local)


def _sgd(model):
    # Plain SGD with lr 1: the update is minus the gradient, so clipping shows in the weights
    # (AdamW's first update is about lr * sign(gradient), whatever the gradient's norm).
    return torch.optim.SGD(model.parameters(), lr=1.0)


def _by_hand(model, x, y, clip=None):
    """One SGD step written out, clipping with torch's clip_grad_norm_; returns the gradient norm."""
    nn.functional.mse_loss(model(x), y).backward()
    norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip if clip is not None else math.inf)
    with torch.no_grad():
        for p in model.parameters():
            p -= p.grad
            p.grad = None
    return norm.item()


def test_clip_grad_clips_the_gradient_norm():
    x, y = _data()
    ours, theirs = _model(), _model()
    start = _weights(ours)
    norm = _by_hand(copy.deepcopy(theirs), x, y)
    clip = norm / 4  # well below the gradient's norm, so clipping matters
    _by_hand(theirs, x, y, clip)
    train_step(ours, _sgd(ours), _mse(ours), [(x, y)], clip_grad=clip)
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p_ours, p_theirs, rtol=0, atol=1e-12)
    update = torch.cat([(a - b).flatten() for a, b in zip(start, ours.parameters())])
    assert update.norm().item() == pytest.approx(clip, rel=1e-6)  # the step's length is the clip
    # A clip above the norm changes nothing.
    loose, plain = _model(), _model()
    train_step(loose, _sgd(loose), _mse(loose), [(x, y)], clip_grad=10 * norm)
    train_step(plain, _sgd(plain), _mse(plain), [(x, y)])
    assert all(torch.equal(a, b) for a, b in zip(loose.parameters(), plain.parameters()))


def _scaler(init_scale=2.0 ** 8):
    # growth_interval=1: the scale doubles after every step without overflow, so that the
    # scaler's update() shows in its scale after a single step.
    return torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1, enabled=True)


def test_a_gradient_scaler_is_unscaled_before_the_step_and_updated_after_it():
    x, y = _data()
    ours, theirs = _model(), _model()
    _by_hand(theirs, x, y)
    scaler = _scaler()
    res = train_step(ours, _sgd(ours), _mse(ours), [(x, y)], scaler=scaler)
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p_ours, p_theirs, rtol=1e-12, atol=1e-12)
    assert scaler.get_scale() == 2.0 ** 9
    assert res.loss == _f32(nn.functional.mse_loss(_model()(x), y).item())  # the loss, not the scaled loss


def test_with_a_gradient_scaler_the_true_gradients_are_clipped():
    x, y = _data()
    ours, theirs = _model(), _model()
    clip = _by_hand(copy.deepcopy(theirs), x, y) / 4
    _by_hand(theirs, x, y, clip)
    train_step(ours, _sgd(ours), _mse(ours), [(x, y)], scaler=_scaler(), clip_grad=clip)
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p_ours, p_theirs, rtol=1e-12, atol=1e-12)


def test_overflowing_scaled_gradients_skip_the_step_and_halve_the_scale():
    # A finite loss whose scaled gradients overflow (what fp16 training meets): the scaler skips
    # the optimizer step and halves its scale; this is not an error.
    model = nn.Linear(3, 1)  # float32: a gradient of 1e37 * 2**8 overflows
    before = _weights(model)
    scaler = _scaler()
    res = train_step(model, _sgd(model), lambda b: 1e37 * model(b).sum(), [torch.ones(1, 3)], scaler=scaler)
    assert math.isfinite(res.loss)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0 ** 7
    assert all(p.grad is None for p in model.parameters())


def test_the_forward_pass_runs_under_the_precisions_autocast():
    x = torch.randn(2, 4)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = nn.Linear(4, 1)
        seen = []

        def loss_fn(batch):
            out = model(batch)  # a matrix product: bfloat16 under CPU autocast
            seen.append(out.dtype)
            return out.float().pow(2).mean()

        train_step(model, _sgd(model), loss_fn, [x], precision=choose_precision("cpu", name))
        assert seen == [dtype]
