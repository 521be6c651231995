import pytest
import torch

from ppp.defenses import PARTS, build_defense, part_of, sample_noise
from ppp.gradients import select_parameters, shared_gradient
from ppp.models import BEFORE, PrecodeSpec, build_model
from ppp.seeding import generator


@pytest.fixture
def precode_model():
    return build_model("mlp", (1, 16, 16), 10, (0.5,), (0.5,), PrecodeSpec(bottleneck_size=8), {"width": 32})


def _grads(model):
    torch.manual_seed(0)
    return shared_gradient(model, torch.rand(1, 1, 16, 16), torch.tensor([1]))


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("name,expected", [
    ("none", set()), ("precode", set()), ("noise", {"before", "encoder", "decoder", "after"}), ("ppp", {"before"}),
    ("ppp_encoder", {"before", "encoder"}), ("ppp_no_decoder", {"before", "encoder", "after"}),
])
def test_each_defense_touches_exactly_its_gradients(precode_model, name, expected, relative):
    grads = _grads(precode_model)
    groups = precode_model.parameter_groups()
    defended = build_defense(name, noise_scale=0.1, relative=relative)(grads, groups, generator(0))
    assert set(defended) == set(grads)
    part = {n: part_of(n, g) for n, g in groups.items()}
    assert set(part.values()) == set(PARTS)
    changed = {part[n] for n in grads if not torch.equal(grads[n], defended[n])}
    assert changed == expected
    for n in grads:
        if part[n] not in expected:
            assert torch.equal(grads[n], defended[n])


def test_relative_noise_is_sigma_times_each_gradients_norm(precode_model):
    grads = _grads(precode_model)
    groups = precode_model.parameter_groups()
    defended = build_defense("noise", noise_scale=0.5, relative=True)(grads, groups, generator(0))
    for n, g in grads.items():
        if g.numel() >= 256:
            ratio = float((defended[n] - g).norm() / g.norm())
            assert 0.4 < ratio < 0.6, n


def test_ppp_noises_every_parameter_before_precode(precode_model):
    grads = _grads(precode_model)
    groups = precode_model.parameter_groups()
    defended = build_defense("ppp", noise_scale=0.1)(grads, groups, generator(0))
    for n, g in groups.items():
        assert torch.equal(grads[n], defended[n]) == (g != BEFORE)


def test_defense_needs_precode_flags():
    assert not build_defense("none").needs_precode and not build_defense("noise").needs_precode
    assert build_defense("precode").needs_precode and build_defense("ppp").needs_precode


def test_noise_is_seeded_and_scaled():
    shape = torch.Size([200_000])
    g1 = sample_noise(shape, "gaussian", 0.3, generator(1), torch.device("cpu"))
    g2 = sample_noise(shape, "gaussian", 0.3, generator(1), torch.device("cpu"))
    assert torch.equal(g1, g2)
    assert abs(float(g1.std()) - 0.3) < 0.01
    lap = sample_noise(shape, "laplace", 0.2, generator(2), torch.device("cpu"))
    assert abs(float(lap.mean())) < 0.01
    assert abs(float(lap.abs().mean()) - 0.2) < 0.01  # E|X| = b for Laplace(0, b)
    assert abs(float(lap.std()) - 0.2 * 2 ** 0.5) < 0.01


def test_unknown_defense_and_distribution_are_named():
    with pytest.raises(ValueError, match="unknown defense 'dp'"):
        build_defense("dp")
    with pytest.raises(ValueError, match="unknown noise distribution"):
        sample_noise(torch.Size([3]), "cauchy", 1.0, generator(0), torch.device("cpu"))
    with pytest.raises(ValueError, match="noise_scale"):
        build_defense("noise", noise_scale=-1)


def test_targeted_selection_leaves_out_precode_and_later_layers(precode_model):
    groups = precode_model.parameter_groups()
    targeted = select_parameters(precode_model, "before_precode")
    assert targeted and all(groups[n] == BEFORE for n in targeted)
    assert set(targeted) == {n for n, g in groups.items() if g == BEFORE}
    with_encoder = select_parameters(precode_model, "before_precode", keep_encoder=True)
    assert set(with_encoder) - set(targeted) == {"bottleneck.encoder.weight", "bottleneck.encoder.bias"}
    assert set(select_parameters(precode_model, "all")) == set(groups)


def test_dpsgd_clips_the_update_to_the_norm_and_adds_noise_scaled_by_it(precode_model):
    grads = _grads(precode_model)
    groups = precode_model.parameter_groups()
    norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads.values())))
    clipped = build_defense("dpsgd", noise_scale=0.0, max_grad_norm=norm / 4)(grads, groups, generator(0))
    assert abs(float(torch.sqrt(sum(g.pow(2).sum() for g in clipped.values()))) - norm / 4) < 1e-4 * norm
    untouched = build_defense("dpsgd", noise_scale=0.0, max_grad_norm=norm * 4)(grads, groups, generator(0))
    assert all(torch.allclose(untouched[n], grads[n]) for n in grads)
    big = torch.zeros(100_000)
    noised = build_defense("dpsgd", noise_scale=2.0, max_grad_norm=0.5)({"w": big}, {"w": "before"}, generator(0))
    assert abs(float(noised["w"].std()) - 1.0) < 0.02  # std = multiplier x clipping norm
    with pytest.raises(ValueError, match="max_grad_norm"):
        build_defense("dpsgd", noise_scale=1.0, max_grad_norm=0)
