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


def test_row_adam_gives_each_row_what_torch_adam_gives_it_at_that_rows_rate():
    """The convergence check's rows run in the main pass at their own schedule: a row of RowAdam must move
    as torch's Adam moves it alone at that row's learning rate (a wrong bias correction or a rate applied
    to the wrong rows would not)."""
    from ppp.attacks.engine import RowAdam

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 2, 5, generator=gen)
    grads = [torch.randn(3, 2, 5, generator=gen) for _ in range(12)]
    rates = [[multistep_lr(0.1, [3, 5, 7], s), multistep_lr(0.3, [2, 3, 4], s), 0.0] for s in range(12)]
    rows = start.clone()
    optimizer = RowAdam([rows])
    for step, grad in enumerate(grads):
        rows.grad = grad.sign()
        optimizer.step(torch.tensor(rates[step]))
    for r in range(2):
        alone = start[r:r + 1].clone()
        reference = torch.optim.Adam([alone], lr=1.0)
        for step, grad in enumerate(grads):
            reference.param_groups[0]["lr"] = rates[step][r]
            alone.grad = grad[r:r + 1].sign()
            reference.step()
        torch.testing.assert_close(rows[r:r + 1], alone, rtol=0, atol=1e-6)
    assert torch.equal(rows[2], start[2])  # rate 0: the row does not move
    assert not torch.allclose(rows[0], start[0])


def test_precision_auto_is_bfloat16_only_where_the_cpu_has_native_bfloat16(monkeypatch):
    """Emulated bfloat16 is slower than float32 (AVX2-only CPUs): auto must not pick it there."""
    from ppp import hardware
    from ppp.attacks.engine import objective_precision

    for flags, expected in [({"avx2", "avx512f"}, "float32"), ({"avx512f", "avx512_bf16"}, "bfloat16"),
                            ({"amx_bf16", "amx_tile"}, "bfloat16"), ({"asimd", "bf16"}, "bfloat16"), (set(), "float32")]:
        hardware.native_bfloat16.cache_clear()
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert hardware.resolve_precision("auto", "cpu") == expected, flags
        assert hardware.resolve_precision("float32", "cpu") == "float32"
        with objective_precision(torch.device("cpu"), "auto"):
            produced = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        assert produced == (torch.bfloat16 if expected == "bfloat16" else torch.float32)
    hardware.native_bfloat16.cache_clear()
