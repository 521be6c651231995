"""Adam and SGD with momentum, computing exactly what torch.optim's single-tensor paths compute.

Why not torch.optim: constructing any torch.optim optimiser imports torch._dynamo (its methods are
wrapped to disable the compiler), 1.1-1.7 s of every training and attack job's start-up on this
machine for a compiler nobody uses here (benchmarks/README.md, "Job start-up"). The updates below
repeat torch's operations in torch's order, and tests/test_optim.py holds them equal to torch.optim
bit for bit, so swapping them changes no number.
"""

from __future__ import annotations

from typing import Iterable

import torch


class Adam:
    """torch.optim.Adam(params, lr, betas, eps, weight_decay) without amsgrad or decoupled decay.
    `lr` may be changed between steps (a schedule sets it)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.steps = [0] * len(self.params)  # per parameter, as torch counts them
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, (param, exp_avg, exp_avg_sq) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq)):
            if param.grad is None:
                continue
            self.steps[i] += 1
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** float(self.steps[i])
            bias_correction2_sqrt = (1 - beta2 ** float(self.steps[i])) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-(self.lr / bias_correction1))


class SGD:
    """torch.optim.SGD(params, lr, momentum, weight_decay) without dampening or Nesterov."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                if self.buffers[i] is None:
                    self.buffers[i] = torch.clone(grad).detach()
                else:
                    self.buffers[i].mul_(self.momentum).add_(grad)
                grad = self.buffers[i]
            param.add_(grad, alpha=-self.lr)


def multistep_lr(base_lr: float, milestones: list[int], step: int, gamma: float = 0.1) -> float:
    """The learning rate of optimiser step `step` (0-based) under torch's MultiStepLR stepped once per
    optimiser step: `base_lr` multiplied by gamma at every milestone at or before `step`, in the same
    order as MultiStepLR multiplies it (so the float is the same)."""
    lr = base_lr
    for milestone in sorted(set(milestones)):
        if milestone <= step:
            lr = lr * gamma ** milestones.count(milestone)
    return lr
