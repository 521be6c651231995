"""The attack's learning-rate schedule: Inverting Gradients' MultiStepLR, computed per step."""

import pytest
import torch

from ppp.attacks.engine import multistep_lr


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
