import math

import torch

from ppp.models import PrecodeSpec, build_model
from ppp.precode import VariationalBottleneck, kl_to_standard_normal_bits
from ppp.seeding import seeded


def test_bottleneck_samples_in_training_and_evaluation():
    vb = VariationalBottleneck((32,), bottleneck_size=8)
    x = torch.randn(4, 32)
    for mode in (vb.train, vb.eval):
        mode()
        assert not torch.allclose(vb(x), vb(x)), "PRECODE must sample on every forward pass"


def test_bottleneck_sampling_is_reproducible_under_a_seed():
    vb = VariationalBottleneck((3, 4, 4), bottleneck_size=8)
    x = torch.randn(2, 3, 4, 4)
    with seeded(7):
        a = vb(x)
    with seeded(7):
        b = vb(x)
    assert a.shape == x.shape
    assert torch.equal(a, b)


def test_kl_is_zero_for_the_prior_and_matches_the_closed_form_in_bits():
    zeros, ones = torch.zeros(3, 5), torch.ones(3, 5)
    assert float(kl_to_standard_normal_bits(zeros, ones)) == 0.0
    mu, std = torch.full((2, 4), 1.0), torch.full((2, 4), 0.5)
    nats_per_dim = 0.5 * (1.0 + 0.25 - 2 * math.log(0.5) - 1)
    expected_bits = 4 * nats_per_dim / math.log(2)
    assert math.isclose(float(kl_to_standard_normal_bits(mu, std)), expected_bits, rel_tol=1e-6)


def test_regularizer_is_beta_times_kl_and_enters_the_model_loss():
    model = build_model("mlp", (1, 8, 8), 10, (0.5,), (0.5,), PrecodeSpec(bottleneck_size=4, beta=0.01),
                        {"width": 16})
    model(torch.rand(2, 1, 8, 8))
    assert torch.isclose(model.regularizer(), 0.01 * model.bottleneck.kl_bits)
    assert model.regularizer() > 0


def test_precode_makes_the_head_gradient_stochastic_but_not_without_it(mnist_victims):
    from ppp.gradients import shared_gradient

    images, labels = mnist_victims
    x, y = images[:1], labels[:1]
    for precode, should_differ in ((PrecodeSpec(bottleneck_size=8), True), (None, False)):
        model = build_model("mlp", (1, 32, 32), 10, (0.13,), (0.31,), precode, {"width": 32})
        g1 = shared_gradient(model, x, y)["stages.head.weight"]
        g2 = shared_gradient(model, x, y)["stages.head.weight"]
        assert (not torch.allclose(g1, g2)) == should_differ


def test_mean_code_is_deterministic_and_the_mode_is_restored():
    from ppp.precode import code_mode

    model = build_model("mlp", (1, 8, 8), 10, (0.5,), (0.5,), PrecodeSpec(bottleneck_size=4), {"width": 16})
    x = torch.rand(3, 1, 8, 8)
    with code_mode(model, "mean"):
        first, second = model(x), model(x)
    assert torch.equal(first, second), "the mean code must make the forward pass deterministic"
    assert not torch.allclose(model(x), model(x)), "outside the block PRECODE must sample again"
    try:
        with code_mode(model, "median"):
            pass
    except ValueError as err:
        assert "sample, mean" in str(err)
    else:
        raise AssertionError("an unknown code mode must be refused")
