"""ppp.optim must compute what torch.optim computes, bit for bit: the study's numbers were produced
with torch.optim, and the swap (made for start-up time) must not change any of them."""

import subprocess
import sys

import pytest
import torch

from ppp.optim import SGD, Adam, multistep_lr


def _problem(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(7, 5, generator=gen), torch.randn(5, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)]
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(12)]
    return params, grads


def _run(make_optimizer, set_lr, params, grads, lrs):
    params = [p.clone().requires_grad_(True) for p in params]
    optimizer = make_optimizer(params)
    for step, (step_grads, lr) in enumerate(zip(grads, lrs)):
        set_lr(optimizer, lr)
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        if step == 5:
            params[1].grad = None  # a parameter without a gradient this step is left alone
        optimizer.step()
    return [p.detach() for p in params]


def _set_torch_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def _set_own_lr(optimizer, lr):
    optimizer.lr = lr


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_equals_torch_adam_bit_for_bit(weight_decay):
    params, grads = _problem(0)
    lrs = [0.1] * 4 + [0.01] * 4 + [0.001] * 4
    ours = _run(lambda ps: Adam(ps, lr=0.1, weight_decay=weight_decay), _set_own_lr, params, grads, lrs)
    theirs = _run(lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=weight_decay, foreach=False),
                  _set_torch_lr, params, grads, lrs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], params[0])


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_with_momentum_equals_torch_sgd_bit_for_bit(weight_decay):
    params, grads = _problem(1)
    lrs = [0.05] * 12
    ours = _run(lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=weight_decay), _set_own_lr, params, grads, lrs)
    theirs = _run(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=weight_decay, foreach=False),
                  _set_torch_lr, params, grads, lrs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("iterations", [1, 2, 8, 100, 1000])
def test_multistep_lr_equals_torch_multisteplr(iterations):
    milestones = [round(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    x = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([x], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    for step in range(iterations):
        assert multistep_lr(0.1, milestones, step) == optimizer.param_groups[0]["lr"], step
        optimizer.step()
        scheduler.step()


def test_our_optimisers_do_not_import_the_compiler():
    code = ("import sys, torch; from ppp.optim import Adam, SGD; x = torch.zeros(3, requires_grad=True); "
            "x.grad = torch.ones(3); Adam([x], lr=0.1).step(); SGD([x], lr=0.1, momentum=0.9).step(); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
