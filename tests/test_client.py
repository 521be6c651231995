"""Client updates of several images and several local steps, and every attack on them."""

import pytest
import torch

from ppp import stages
from ppp.attacks import ServerView, build_attack
from ppp.attacks.analytic import recover_feature_span
from ppp.attacks.engine import GradientMatchingProblem, GradientMatching, optimise
from ppp.attacks.labels import infer_update_labels, label_accuracy
from ppp.client import (ClientSetting, client_update, form_updates, functional_update, local_training_update,
                        simulated_local_training)
from ppp.defenses import build_defense
from ppp.gradients import select_parameters, shared_gradient
from ppp.io import load_tensors, write_json
from ppp.metrics import image_metrics
from ppp.models import PrecodeSpec, build_model
from ppp.seeding import seeded

from conftest import mnist_stats


def _model(arch="mlp", precode=None, width=64, channels=1, seed=0):
    mean, std = mnist_stats() if channels == 1 else ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    options = {"width": width} if arch == "mlp" else {}
    with seeded(seed):
        return build_model(arch, (channels, 32, 32), 10, mean, std, precode, options).eval()


def _updates(model, images, labels, setting, defense="none", sigma=0.0):
    """The server's view of consecutive updates of `setting.images` victims."""
    chosen = build_defense(defense, sigma)
    per_update = []
    for u, members in enumerate(form_updates(images.shape[0], setting.images)):
        with seeded(100 + u):
            per_update.append(client_update(model, images[members], labels[members], setting, chosen,
                                            torch.Generator().manual_seed(u)))
    grads = {n: torch.stack([g[n] for g in per_update]) for n in per_update[0]}
    return ServerView(model, grads, labels.clone(), images_per_update=setting.images,
                      local_steps=setting.local_steps, local_lr=setting.local_lr)


def _matched_ssim(images, reconstructions, group):
    out = []
    for u in range(images.shape[0] // group):
        members = list(range(u * group, (u + 1) * group))
        order = stages.match_reconstructions(images[members], reconstructions[members])
        out += [image_metrics(images[i], reconstructions[members[order[k]]])["ssim"] for k, i in enumerate(members)]
    return torch.tensor(out)


def test_updates_are_disjoint_consecutive_groups_and_too_few_victims_are_refused():
    assert form_updates(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert form_updates(9, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert form_updates(3, 1) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="at least 8 victims"):
        form_updates(4, 8)
    assert ClientSetting.parse("b4s2", 0.05) == ClientSetting(4, 2, 0.05)
    with pytest.raises(ValueError, match="b<images>s<local steps>"):
        ClientSetting.parse("4x2")


@pytest.mark.parametrize("setting, name", [
    (ClientSetting(1, 1, 0.1), "b1s1"), (ClientSetting(4, 1, 0.1), "b4s1"),
    (ClientSetting(4, 2, 0.1), "b4s2lr0.1"), (ClientSetting(4, 2, 0.01), "b4s2lr0.01"),
    (ClientSetting(4, 5, 0.001), "b4s5lr0.001"), (ClientSetting(2, 2, 1e-5), "b2s2lr1e-05")])
def test_a_setting_s_name_carries_fedavg_s_lr_and_parses_back(setting, name):
    assert setting.name == name
    # FedSGD's name has no lr (one step's gradient does not depend on it): parse takes the given one.
    assert ClientSetting.parse(name, setting.local_lr) == setting
    if setting.local_steps > 1:  # the name's lr wins over a given one that differs
        assert ClientSetting.parse(name) == setting == ClientSetting.parse(name, 0.5)
        assert setting.key_lr == setting.local_lr
    else:
        assert setting.key_lr == 0.0


@pytest.mark.parametrize("name", ["b4s1lr0.1", "b4s2lr", "b4s2lr.1", "b4s2lr0.1.2", "b4s2lr0.1x", "b4s2lr-0.1"])
def test_names_that_are_no_setting_are_refused(name):
    with pytest.raises(ValueError, match="b<images>s|FedSGD|learning rate|local_lr"):
        ClientSetting.parse(name)


def test_one_architecture_sweeps_fedavg_at_two_local_learning_rates():
    import yaml

    from ppp.config import ConfigError, client_setting, client_settings, validate_config

    config = yaml.safe_load(open("config/config.yaml"))
    config["client"]["per_arch"]["lenet"]["updates"] = [
        {"images": 1}, {"images": 4, "local_steps": 2}, {"images": 4, "local_steps": 2, "local_lr": 0.01}]
    validate_config(config)
    settings = client_settings(config, "lenet")
    assert [s.name for s in settings] == ["b1s1", "b4s2lr0.1", "b4s2lr0.01"]
    assert [s.local_lr for s in settings[1:]] == [0.1, 0.01]  # the arch's (client.local_lr), then the update's
    assert client_setting(config, "lenet", "b4s2lr0.01") == ClientSetting(4, 2, 0.01)
    # The capture and attack scripts rebuild the setting from its name and the rule's local_lr param.
    for setting in settings:
        assert ClientSetting.parse(setting.name, client_setting(config, "lenet", setting.name).local_lr) == setting
    # An arch's own local_lr is overridden by the update's.
    config["client"]["per_arch"]["lenet"]["local_lr"] = 0.05
    assert [s.name for s in client_settings(config, "lenet")] == ["b1s1", "b4s2lr0.05", "b4s2lr0.01"]
    # The same update twice (at the same lr) is one setting listed twice.
    config["client"]["per_arch"]["lenet"]["updates"][1]["local_lr"] = 0.01
    with pytest.raises(ConfigError, match="lenet lists the setting b4s2lr0.01 twice"):
        validate_config(config)
    # FedSGD ignores the lr: two 4-image FedSGD updates are one setting whatever their lr.
    config["client"]["per_arch"]["lenet"]["updates"] = [{"images": 4}, {"images": 4, "local_lr": 0.01}]
    with pytest.raises(ConfigError, match="lenet lists the setting b4s1 twice"):
        validate_config(config)
    # A rate the name would round is refused: the name is the setting.
    config["client"]["per_arch"]["lenet"]["updates"] = [{"images": 4, "local_steps": 2, "local_lr": 0.123456789}]
    with pytest.raises(ConfigError, match="would round it"):
        validate_config(config)
    config["client"]["per_arch"]["lenet"]["updates"] = [{"images": 4, "local_steps": 2, "local_lr": 0}]
    with pytest.raises(ConfigError, match="local_lr"):
        validate_config(config)


def test_evaluation_keys_a_cell_by_its_setting_s_lr_and_names_its_metrics_by_the_setting(tmp_path):
    from ppp.io import save_tensors

    assert stages.parse_cell("r/attacks/mnist/lenet/b4s2lr0.01/ppp/0.1/init/head/reconstructions.safetensors") == dict(
        dataset="mnist", arch="lenet", batch_size=4, local_steps=2, local_lr=0.01, local_batch=0, defense="ppp",
        noise_scale=0.1, attack="head", model_state="init")
    assert stages.parse_cell("r/attacks/mnist/lenet/b4s1/none/0/init/ig/reconstructions.safetensors")["local_lr"] == 0.0
    with pytest.raises(ValueError, match="lr<local lr>"):  # a FedAvg path without its rate
        stages.parse_cell("r/attacks/mnist/lenet/b4s2/none/0/init/ig/reconstructions.safetensors")
    images, labels = torch.rand(4, 1, 32, 32), torch.tensor([1, 2, 3, 4])
    save_tensors(tmp_path / "victims.safetensors", {"images": images, "labels": labels})
    paths = []
    for client in ("b4s2lr0.1", "b4s2lr0.01"):
        path = tmp_path / "attacks/mnist/lenet" / client / "none/0/init/head/reconstructions.safetensors"
        path.parent.mkdir(parents=True)
        save_tensors(path, {"images": images.flip(0)})
        paths.append(str(path))
    means, *_ = stages.evaluate_cells(paths, str(tmp_path / "victims.safetensors"), str(tmp_path / "metrics.csv"),
                                      str(tmp_path / "grid.png"))
    assert {"ssim_mean.head.none.0.b4s2lr0.1", "ssim_mean.head.none.0.b4s2lr0.01"} <= set(means)
    import pandas as pd

    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert sorted(set(rows.local_lr)) == [0.01, 0.1] and (rows.ssim > 0.99).all()  # matched within each update


@pytest.mark.parametrize("precode", [None, PrecodeSpec(bottleneck_size=16)])
def test_fedavg_with_one_local_step_equals_fedsgd(mnist_victims, precode):
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    model = _model(precode=precode)
    with seeded(3):
        fedsgd = shared_gradient(model, images, labels)
    with seeded(3):
        fedavg = local_training_update(model, images, labels, local_steps=1, local_lr=0.05)
    for name in fedsgd:
        assert torch.allclose(fedavg[name], fedsgd[name], rtol=1e-4, atol=1e-6), name
    # The server's two simulations (autograd and torch.func) agree with the client at one step and at three.
    names = list(fedsgd)
    with torch.no_grad():
        weights = {n: p.detach() for n, p in model.named_parameters()}
    from ppp.precode import code_mode

    with code_mode(model, "mean"):
        for steps in (1, 3):
            client = local_training_update(model, images, labels, steps, 0.05)
            simulated = simulated_local_training(model, images, labels, names, steps, 0.05, create_graph=False)
            functional = functional_update(model, weights, images, labels, names, steps, 0.05)
            for name in names:
                assert torch.allclose(simulated[name], client[name], rtol=1e-4, atol=1e-6), (steps, name)
                assert torch.allclose(functional[name], client[name], rtol=1e-4, atol=1e-6), (steps, name)
    # More steps change the update (so a FedAvg attack must simulate them).
    three = local_training_update(model, images, labels, 3, 0.5)
    assert not torch.allclose(three[names[0]], fedsgd[names[0]], rtol=1e-2)


def test_local_training_leaves_the_model_unchanged(mnist_victims):
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    client_update(model, mnist_victims[0][:4], mnist_victims[1][:4], ClientSetting(4, 3, 0.1), build_defense("none"),
                  torch.Generator().manual_seed(0))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_dpsgd_on_an_update_clips_each_image_then_noises_the_sum(mnist_victims):
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    model = _model()
    quiet = build_defense("dpsgd", 0.0, max_grad_norm=0.01)
    update = client_update(model, images, labels, ClientSetting(4, 1), quiet, torch.Generator().manual_seed(0))
    per_image = [shared_gradient(model, images[i:i + 1], labels[i:i + 1]) for i in range(4)]
    norms = [torch.sqrt(sum(g.pow(2).sum() for g in grads.values())) for grads in per_image]
    assert all(n > 0.01 for n in norms)  # every image's gradient is clipped here
    for name in update:
        expected = sum(g[name] * (0.01 / (n + 1e-6)) for g, n in zip(per_image, norms)) / 4
        assert torch.allclose(update[name], expected, atol=1e-7)
    noisy = client_update(model, images, labels, ClientSetting(4, 1), build_defense("dpsgd", 1.0, max_grad_norm=0.01),
                          torch.Generator().manual_seed(0))
    residual = torch.cat([(noisy[n] - update[n]).flatten() for n in update])
    assert residual.std().item() == pytest.approx(0.01 / 4, rel=0.05)  # std sigma * C on the sum, / B


def test_llg_recovers_repeated_labels_where_yin_cannot(mnist_victims):
    images, labels = mnist_victims[0][:8], mnist_victims[1][:8]
    assert len(set(labels[4:8].tolist())) < 4  # the second update repeats a label
    view = _updates(_model(), images, labels, ClientSetting(4, 1))
    llg = infer_update_labels(view.model, view.gradients, 4, "llg")
    assert label_accuracy(llg, labels, 4).tolist() == [1.0, 1.0]
    yin = infer_update_labels(view.model, view.gradients, 4, "yin")
    assert label_accuracy(yin, labels, 4).tolist()[1] < 1.0
    with pytest.raises(ValueError, match="one label per update"):
        infer_update_labels(view.model, view.gradients, 4, "idlg")
    # The attack uses them when the server is not told the labels.
    blind = ServerView(view.model, view.gradients, None, images_per_update=4)
    result = build_attack("ig", iterations=1, labels="inferred")(blind, seed=0)
    assert label_accuracy(result.labels, labels, 4).tolist() == [1.0, 1.0]


def test_matching_finds_the_permutation_of_an_update():
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    order = [2, 0, 3, 1]
    shuffled = images[order] + 0.01
    assignment = stages.match_reconstructions(images, shuffled)
    assert [order[assignment[i]] for i in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize("arch,precode", [("mlp", None), ("lenet", None), ("mlp", PrecodeSpec(bottleneck_size=16)),
                                          ("lenet", PrecodeSpec(bottleneck_size=16))])
def test_batched_engines_equal_the_loop_on_updates_of_several_images(mnist_victims, arch, precode):
    images, labels = mnist_victims[0][:8], mnist_victims[1][:8]
    view = _updates(_model(arch, precode), images, labels, ClientSetting(4, 1))
    names = select_parameters(view.model, "all" if precode is None else "before_precode")
    problem = dict(names=names, iterations=1, lr=0.1, tv_weight=1e-2, restarts=1, init="randn", signed=True,
                   boxed=True, lr_decay=False, precode_code="mean")
    x = torch.randn(2, 4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = [view.gradients[n] for n in names]
    rows = torch.arange(2)
    row_labels = labels.view(2, 4)
    from ppp.precode import code_mode

    results = {}
    with code_mode(view.model, "mean"):
        for engine in ("loop", "per_layer", "vmap"):
            objective = GradientMatching(view.model, row_labels, targets, GradientMatchingProblem(engine=engine, **problem), x)
            losses, grads = objective.evaluate(x, rows, None)
            results[engine] = (losses, grads)
    for engine in ("per_layer", "vmap"):
        assert torch.allclose(results[engine][0], results["loop"][0], rtol=1e-4, atol=1e-6), engine
        assert torch.allclose(results[engine][1], results["loop"][1], rtol=1e-3, atol=1e-6), engine


@pytest.mark.parametrize("arch,precode", [("mlp", None), ("lenet", PrecodeSpec(bottleneck_size=16))])
def test_the_vmap_engine_equals_the_loop_under_fedavg(mnist_victims, arch, precode):
    """FedAvg's simulated local steps batched over rows with torch.func (what config/gpu.yaml runs on a GPU,
    where the loop's launches per row dominate) compute the loop's losses and image gradients."""
    images, labels = mnist_victims[0][:8], mnist_victims[1][:8]
    setting = ClientSetting(4, 2, 0.1)
    view = _updates(_model(arch, precode), images, labels, setting)
    names = select_parameters(view.model, "all" if precode is None else "before_precode")
    problem = dict(names=names, iterations=1, lr=0.1, tv_weight=1e-2, restarts=1, init="randn", signed=True,
                   boxed=True, lr_decay=False, precode_code="mean", local_steps=2, local_lr=0.1)
    x = torch.randn(2, 4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    targets, rows, row_labels = [view.gradients[n] for n in names], torch.arange(2), labels.view(2, 4)
    from ppp.precode import code_mode

    results = {}
    with code_mode(view.model, "mean"):
        for engine in ("loop", "vmap"):
            objective = GradientMatching(view.model, row_labels, targets, GradientMatchingProblem(engine=engine, **problem), x)
            assert objective.engine == engine
            results[engine] = objective.evaluate(x, rows, None)
    assert torch.allclose(results["vmap"][0], results["loop"][0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(results["vmap"][1], results["loop"][1], rtol=1e-3, atol=1e-6)
    assert results["loop"][1].abs().sum() > 0


def test_inverting_gradients_reconstructs_four_image_updates_of_an_undefended_mlp(mnist_victims):
    images, labels = mnist_victims[0][:8], mnist_victims[1][:8]
    view = _updates(_model(width=256), images, labels, ClientSetting(4, 1))
    result = build_attack("ig", iterations=300, tv_weight=1e-4)(view, seed=0)
    assert result.images.shape == images.shape and result.engine == "per_layer"
    ssim = _matched_ssim(images, result.images, 4)
    assert ssim.median() > 0.5, ssim


def test_fedavg_attack_simulates_the_local_steps(mnist_victims):
    """With the local steps simulated, the attack matches a FedAvg update more closely than one that
    matches it as a single gradient (the server not told the local hyper-parameters)."""
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    setting = ClientSetting(4, 3, 0.1)
    view = _updates(_model(width=256), images, labels, setting)
    told = build_attack("ig", iterations=200, tv_weight=1e-4)(view, seed=0)
    assert told.engine == "loop"
    blind_view = ServerView(view.model, view.gradients, view.labels, images_per_update=4)
    blind = build_attack("ig", iterations=200, tv_weight=1e-4)(blind_view, seed=0)
    assert _matched_ssim(images, told.images, 4).median() > 0.5
    assert float(told.gradient_loss) < float(blind.gradient_loss)


def test_analytic_span_holds_every_encoder_input_of_an_update(mnist_victims):
    """For B images the encoder's gradient has rank B and its row space holds each [u_i, 1]."""
    images, labels = mnist_victims[0][:8], mnist_victims[1][:8]
    model = _model(precode=PrecodeSpec(bottleneck_size=16))
    view = _updates(model, images, labels, ClientSetting(4, 1))
    weight, bias = model.encoder_parameter_names()
    stacked = torch.cat([view.gradients[weight], view.gradients[bias].unsqueeze(-1)], -1)
    singular = torch.linalg.svdvals(stacked.double())
    assert (singular[:, 4] < 1e-6 * singular[:, 0]).all() and (singular[:, 3] > 1e-4 * singular[:, 0]).all()
    span = recover_feature_span(view.gradients[weight], view.gradients[bias], 4)
    from ppp.attacks.analytic import features_before_precode

    with torch.no_grad():
        features = features_before_precode(model, images)
    augmented = torch.cat([features, torch.ones(8, 1)], 1).view(2, 4, -1).double()
    residual = augmented - torch.bmm(torch.bmm(augmented, span.double().transpose(1, 2)), span.double())
    assert (residual.norm(dim=2) < 1e-3 * augmented.norm(dim=2)).all()


def test_analytic_attack_on_updates_of_several_images_matches_the_span(mnist_victims):
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    model = _model(precode=PrecodeSpec(bottleneck_size=16), width=256)
    view = _updates(model, images, labels, ClientSetting(4, 1))
    result = build_attack("analytic", iterations=300, tv_weight=1e-2)(view, seed=0)
    from ppp.attacks.analytic import SpanMatching, recover_feature_span

    weight, bias = model.encoder_parameter_names()
    objective = SpanMatching(model, recover_feature_span(view.gradients[weight], view.gradients[bias], 4), 0.0)
    # matching_loss takes normalised images, as the optimiser holds them.
    normalised = ((images - model.mean[0]) / model.std[0]).unsqueeze(0)
    # The true images' span is the recovered one (loss ~0), and the attack gets close to it.
    assert float(objective.matching_loss(normalised, torch.tensor([0]))) < 1e-4
    assert float(result.gradient_loss) < 0.1  # from 0.83 at the start
    assert result.images.shape == images.shape


def test_one_image_one_step_gives_the_study_s_original_numbers(tmp_path):
    """A cell pinned at the commit before client updates existed (fdddfed): capture and attack of one
    image per update and one step give the numbers they gave then.

    Floating-point results differ in their last bits between CPU families, BLAS builds, SIMD widths and
    thread counts, so each number is compared with a tolerance (docs/testing.md). Measured on an AMD EPYC:
    1 vs 2 vs 4 threads, torch's scalar kernels (ATEN_CPU_CAPABILITY=default) vs AVX2, MKL_CBWR=COMPATIBLE
    and the whole cell in float64 move no number by more than 1/45 of its tolerance; each tolerance still
    fails on PPP's sigma 0.1 -> 0.101, PPP noising one tensor fewer or PRECODE's encoder too, PRECODE's
    sample mu - eps * std, other noise seeds, the attack's lr or TV weight times 1.01 and one iteration
    fewer."""
    meta = dict(dataset="mnist", channels=1, image_size=32, num_classes=10, mean=[0.1307], std=[0.3081])
    write_json(tmp_path / "meta.json", meta)
    stages.prepare_victims("mnist", "data/victims/mnist_128_cvb.npz", 32, 4, str(tmp_path / "victims.safetensors"))
    spec = PrecodeSpec(bottleneck_size=16)
    stages.init_model("mlp", "precode", str(tmp_path / "meta.json"), {"width": 64}, spec, 0,
                      str(tmp_path / "init.safetensors"))
    noise = {"distribution": "gaussian", "relative": False, "max_grad_norm": 1.0, "delta": 1e-5, "clipping": "auto"}
    stages.capture_gradients("mlp", "ppp", 0.1, noise, "init", str(tmp_path / "init.safetensors"),
                             str(tmp_path / "meta.json"), str(tmp_path / "victims.safetensors"), 4, {"width": 64},
                             spec, 0, torch.device("cpu"), str(tmp_path / "grads.safetensors"))
    grads = {k[len("grad/"):]: v.double() for k, v in load_tensors(tmp_path / "grads.safetensors").items()
             if k.startswith("grad/")}
    # The sum's terms have both signs, so its round-off scales with sum |g| (22,672), not with the sum: the
    # tolerance, 1e-6 sum |g| (0.023), is 8 float32 ulps on every element, all in the same direction. Measured
    # spread 5e-4 (the Gaussian sampler's scalar vs AVX2 code); sigma 0.101 moves the sum by 0.51.
    total, size = sum(float(g.sum()) for g in grads.values()), sum(float(g.abs().sum()) for g in grads.values())
    assert total == pytest.approx(59.95694788615082, abs=1e-6 * size)
    # Each sent tensor's norm (the noise's scale, per part): measured spread 1e-7, sigma 0.101 moves
    # fc1's by 1e-2, noising PRECODE's encoder too multiplies its weight's norm by 8.
    norms = {"bottleneck.decoder.bias": 1.153956896, "bottleneck.decoder.weight": 3.111533063,
             "bottleneck.encoder.bias": 0.8407425274, "bottleneck.encoder.weight": 1.124353181,
             "stages.fc1.1.bias": 1.635843671, "stages.fc1.1.weight": 51.2702972,
             "stages.fc2.0.bias": 1.598799924, "stages.fc2.0.weight": 12.92087016,
             "stages.head.bias": 1.927964837, "stages.head.weight": 6.550014953}
    assert {k: float(g.norm()) for k, g in grads.items()} == pytest.approx(norms, rel=1e-5)
    # The 30 signed-Adam steps are not chaotic: targets perturbed by up to 1e-5 (relative) give the same
    # reconstructions bit for bit (no sign flips), and the measured spread is 2e-8 (image sum) and 7e-8
    # (losses). The smallest changes a bug made: 7e-5 on an image sum, 2e-4 on a loss (rel 1e-5 here).
    pinned = {"ig_targeted": (941.6506468430161, [0.9467175006866455, 0.9381774067878723, 0.9332878589630127,
                                                   0.9471222162246704]),
              "latent": (869.243345849216, [0.8714264631271362, 0.8580005168914795, 0.8404626846313477,
                                            0.839479386806488])}
    for attack, (image_sum, losses) in pinned.items():
        stages.run_attack("mlp", attack, {"iterations": 30, "tv_weight": 1e-4}, True, str(tmp_path / "init.safetensors"),
                          str(tmp_path / "meta.json"), str(tmp_path / "grads.safetensors"), {"width": 64}, spec, 7,
                          torch.device("cpu"), str(tmp_path / f"{attack}.safetensors"))
        result = load_tensors(tmp_path / f"{attack}.safetensors")
        assert float(result["images"].double().sum()) == pytest.approx(image_sum, rel=1e-5), attack
        assert [float(x) for x in result["gradient_loss"]] == pytest.approx(losses, rel=1e-5), attack


@pytest.mark.parametrize("attack", ["ig", "analytic"])
def test_cells_attacked_in_one_optimisation_get_what_each_gets_alone(tmp_path, attack):
    """The workflow's attack job puts every cell that shares a model into one optimisation; each cell's
    reconstructions must be those of attacking it alone (its own seed, its own rows), and a cell with
    another model (the plain variant) is its own group in the same call."""
    meta = dict(dataset="mnist", channels=1, image_size=32, num_classes=10, mean=[0.1307], std=[0.3081])
    write_json(tmp_path / "meta.json", meta)
    stages.prepare_victims("mnist", "data/victims/mnist_128_cvb.npz", 32, 4, str(tmp_path / "victims.safetensors"))
    spec = PrecodeSpec(bottleneck_size=16)
    noise = {"distribution": "gaussian", "relative": False, "max_grad_norm": 1.0, "delta": 1e-5, "clipping": "auto"}
    setting = ClientSetting(images=2)
    cells = [("precode", 0.0, "precode"), ("ppp", 0.1, "precode"), ("noise", 0.1, "plain")]
    if attack == "analytic":
        cells = cells[:2]
    for variant in ("plain", "precode"):
        stages.init_model("mlp", variant, str(tmp_path / "meta.json"), {"width": 64}, spec, 0,
                          str(tmp_path / f"{variant}.safetensors"))
    attack_cells = []
    for k, (defense, sigma, variant) in enumerate(cells):
        stages.capture_gradients("mlp", defense, sigma, noise, "init", str(tmp_path / f"{variant}.safetensors"),
                                 str(tmp_path / "meta.json"), str(tmp_path / "victims.safetensors"), 4,
                                 {"width": 64}, spec, 0, torch.device("cpu"), str(tmp_path / f"g{k}.safetensors"),
                                 setting=setting)
        attack_cells.append(stages.AttackCell(str(tmp_path / f"g{k}.safetensors"),
                                              str(tmp_path / f"{variant}.safetensors"), variant == "precode",
                                              100 + k, str(tmp_path / f"together{k}.safetensors")))
    options = {"iterations": 20, "tv_weight": 1e-4}
    summaries = stages.run_attack_cells("mlp", attack, {**options, "convergence_images": 2}, attack_cells,
                                        str(tmp_path / "meta.json"), {"width": 64}, spec, torch.device("cpu"),
                                        setting=setting)
    assert [s["cells_in_pass"] for s in summaries] == [2, 2, 1][:len(cells)]
    for k, cell in enumerate(attack_cells):
        alone = str(tmp_path / f"alone{k}.safetensors")
        stages.run_attack("mlp", attack, options, cell.has_precode, cell.model_path, str(tmp_path / "meta.json"),
                          cell.gradients_path, {"width": 64}, spec, cell.seed, torch.device("cpu"), alone,
                          setting=setting)
        together, by_itself = load_tensors(cell.out), load_tensors(alone)
        assert together["images"].shape == (4, 1, 32, 32)
        torch.testing.assert_close(together["images"], by_itself["images"], atol=1e-4, rtol=0)
        torch.testing.assert_close(together["gradient_loss"], by_itself["gradient_loss"], atol=1e-5, rtol=1e-4)
        # The convergence check: the cell's first update (2 images) again at half the budget, as a run of
        # 10 iterations gives it; the other update has none.
        half = str(tmp_path / f"half{k}.safetensors")
        stages.run_attack("mlp", attack, {**options, "iterations": 10}, cell.has_precode, cell.model_path,
                          str(tmp_path / "meta.json"), cell.gradients_path, {"width": 64}, spec, cell.seed,
                          torch.device("cpu"), half, setting=setting)
        assert torch.isnan(together["images_half"][2:]).all() and "images_half" not in by_itself
        torch.testing.assert_close(together["images_half"][:2], load_tensors(half)["images"][:2], atol=1e-4, rtol=0)
        assert not torch.allclose(together["images_half"][:2], together["images"][:2])
    # Different cells' rows are not the same rows: their starts and targets differ.
    first, second = load_tensors(attack_cells[0].out), load_tensors(attack_cells[1].out)
    assert not torch.allclose(first["images"], second["images"])


def test_a_client_setting_larger_than_the_victims_is_refused_naming_the_key():
    import yaml

    from ppp.config import (ConfigError, attack_options, attack_runs_on, client_attacks, client_defenses,
                            client_settings, client_victims, validate_config)

    config = yaml.safe_load(open("config/test.yaml"))
    config["client"]["updates"] = [{"images": 4}]
    config["client"].pop("per_arch")  # test.yaml names the MLP's sweep too (to replace the default's)
    with pytest.raises(ConfigError, match="config key 'client.updates': an update of 4 images needs at least 4"):
        validate_config(config)
    config = yaml.safe_load(open("config/config.yaml"))
    validate_config(config)
    assert [s.name for s in client_settings(config, "mlp")] == ["b1s1", "b4s1", "b4s2lr0.1"]
    assert [s.name for s in client_settings(config, "lenet")] == ["b1s1", "b4s1", "b4s2lr0.1", "b4s2lr0.01"]
    assert client_victims(config, "mlp", "b4s1") == 16 and client_victims(config, "lenet", "b1s1") == 16
    # LeNet's batches run the head attack (at FedAvg lr 0.01 also the analytic attack, on PRECODE models);
    # a setting's attacks are cut to the preset's list.
    assert client_attacks(config, "lenet", "b4s1") == ["head"] == client_attacks(config, "lenet", "b4s2lr0.1")
    assert client_attacks(config, "lenet", "b4s2lr0.01") == ["analytic", "head"]
    assert attack_options(config, "lenet", "analytic", "b4s2lr0.01")["iterations"] == 4000
    assert client_defenses(config, "lenet", "b4s2lr0.01") == ["none", "precode", "ppp", "ppp_encoder"]
    assert client_attacks(config, "mlp", "b4s2lr0.1") == ["ig", "ig_targeted", "analytic"]
    assert "head" not in client_attacks(config, "mlp", "b1s1")
    assert client_attacks({**config, "attacks": ["ig"]}, "lenet", "b4s1") == []
    # A setting's own attack_defenses replaces the study's for that attack there, and nowhere else: the head
    # attack leaves PRECODE and PPP to the analytic one at LeNet's FedAvg lr 0.01 only.
    def runs_on(attack, arch, client):
        return [d for d in config["defenses"] if attack_runs_on(config, attack, d, arch, client)]
    assert runs_on("head", "lenet", "b4s2lr0.01") == ["none", "ppp_encoder"]
    assert runs_on("head", "lenet", "b4s2lr0.1") == config["defenses"] == runs_on("analytic", "lenet", "b4s2lr0.01")
    assert runs_on("ig_targeted", "mlp", "b4s2lr0.1") == ["precode", "ppp_encoder"]
    assert runs_on("ig", "mlp", "b4s2lr0.1") == ["none", "noise", "precode"] == runs_on("ig", "mlp", "b1s1")
    bad = yaml.safe_load(open("config/config.yaml"))
    bad["client"]["per_arch"]["lenet"]["updates"][3]["attack_defenses"] = {"head": ["none", "ppp_no_decoder"]}
    with pytest.raises(ConfigError, match=r"setting b4s2lr0.01 of lenet runs head on defences \['ppp_no_decoder'\]"):
        validate_config(bad)
    bad = yaml.safe_load(open("config/config.yaml"))
    bad["client"]["per_arch"]["lenet"]["updates"][1]["attacks"] = ["heads"]
    with pytest.raises(ConfigError, match=r"setting b4s1 of lenet lists unknown attacks \['heads'\]"):
        validate_config(bad)
    config["client"]["per_arch"]["mlp"]["updates"][2:] = [
        {"images": 4, "local_steps": 2, "victims": 4, "defenses": ["none", "precode"]}]  # as config/gpu.yaml
    validate_config(config)
    assert client_victims(config, "mlp", "b4s2lr0.1") == 4
    assert client_defenses(config, "mlp", "b4s2lr0.1") == ["none", "precode"]
    assert client_defenses(config, "mlp", "b4s1") == config["defenses"]
    config["client"]["per_arch"]["mlp"]["updates"][2]["defenses"] = ["none", "ppp_no_decoder"]
    with pytest.raises(ConfigError, match=r"setting b4s2lr0.1 of mlp lists defences \['ppp_no_decoder'\]"):
        validate_config(config)


def test_label_inference_leaves_batchnorm_running_statistics_untouched(cifar_victims):
    """The llg strategy runs the server's own forward pass; on a BatchNorm model in training mode it
    must not move the attacked model's running statistics."""
    images, labels = cifar_victims[0][:4], cifar_victims[1][:4]
    with seeded(0):
        model = build_model("convnet", (3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), None,
                            {"width": 8}).train()
    grads = shared_gradient(model, images, labels)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    infer_update_labels(model, {n: g.unsqueeze(0) for n, g in grads.items()}, 4, "llg")
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_a_client_setting_sets_its_own_attack_budget_over_the_architectures():
    """client.updates[].attack (and its per_attack) override the attack options at that setting only: an
    update of several images needs a longer budget than one image."""
    import yaml

    from ppp.config import ConfigError, attack_options, validate_config

    config = yaml.safe_load(open("config/config.yaml"))
    config["client"]["per_arch"]["lenet"] = {"updates": [
        {"images": 1}, {"images": 4, "attack": {"iterations": 10000, "per_attack": {"analytic": {"iterations": 3000}}}}]}
    validate_config(config)
    assert attack_options(config, "lenet", "ig", "b1s1")["iterations"] == 1000
    assert attack_options(config, "lenet", "ig", "b4s1")["iterations"] == 10000
    assert attack_options(config, "lenet", "ig_targeted", "b4s1")["tv_weight"] == 0.03  # the rest: the arch's
    assert attack_options(config, "lenet", "analytic", "b4s1")["iterations"] == 3000
    assert attack_options(config, "lenet", "analytic", "b1s1")["iterations"] == 1000
    with pytest.raises(ValueError, match="client setting 'b8s1' is not swept for lenet"):
        attack_options(config, "lenet", "ig", "b8s1")
    own = config["client"]["per_arch"]["lenet"]["updates"][1]
    own["attack"]["per_attack"]["ig"] = {"victims": 8}
    with pytest.raises(ConfigError, match="setting b4s1 of lenet sets attack.victims"):
        validate_config(config)
    own["attack"] = {"victims": 8}
    with pytest.raises(ConfigError, match="setting b4s1 of lenet sets attack.victims"):
        validate_config(config)
    own["attack"] = {"iteration": 5}
    with pytest.raises(ConfigError, match="iteration"):
        validate_config(config)
    own["attack"] = {"iterations": 0}  # a bad value is named as such, not as an unknown key
    with pytest.raises(ConfigError, match="0 is less than the minimum of 1"):
        validate_config(config)


def test_a_fedavg_update_on_mini_batches_is_configured_by_local_batch():
    """client.updates[].local_batch: full batch and 2 mini-batches of 2 at the same images, steps and lr are
    two settings (names, paths, table rows); the scripts rebuild each from its name; a size that does not
    divide the update is one error naming the key."""
    import yaml

    from ppp.config import ConfigError, client_setting, client_settings, validate_config
    from ppp.stages import cell_setting, parse_cell

    config = yaml.safe_load(open("config/config.yaml"))
    config["client"]["per_arch"]["lenet"]["updates"] = [
        {"images": 4, "local_steps": 2, "local_lr": 0.1},
        {"images": 4, "local_steps": 2, "local_lr": 0.1, "local_batch": 2},
        {"images": 4, "local_steps": 2, "local_lr": 0.1, "local_batch": 4}]  # all 4 per step: full batch
    with pytest.raises(ConfigError, match="lenet lists the setting b4s2lr0.1 twice"):
        validate_config(config)
    del config["client"]["per_arch"]["lenet"]["updates"][2]
    validate_config(config)
    settings = client_settings(config, "lenet")
    assert [s.name for s in settings] == ["b4s2lr0.1", "b4s2lr0.1m2"]
    assert settings[1].batches == [[0, 1], [2, 3]] and settings[0].batches is None
    for setting in settings:
        assert ClientSetting.parse(setting.name, client_setting(config, "lenet", setting.name).local_lr) == setting
        cell = parse_cell(f"results/attacks/mnist/lenet/{setting.name}/none/0/init/ig/reconstructions.safetensors")
        assert cell["local_batch"] == setting.local_batch and cell_setting(cell) == setting
    config["client"]["per_arch"]["lenet"]["updates"][1]["local_batch"] = 3
    with pytest.raises(ConfigError, match=r"'client.updates' \(lenet\): client local_batch must divide the 4 images"):
        validate_config(config)


def test_fedavg_on_mini_batches_visits_them_in_turn_and_the_server_simulates_it(mnist_victims):
    """2 mini-batches of 2 (b4s3lr0.05m2): steps take images 0-1, 2-3, 0-1; the client's pseudo-gradient is
    the plain SGD run's on those batches, and both server simulations reproduce it."""
    from ppp.client import local_batches
    assert local_batches(4, 2, 3) == [[0, 1], [2, 3], [0, 1]] and local_batches(4, 0, 3) is None
    setting = ClientSetting(4, 3, 0.05, local_batch=2)
    assert setting.name == "b4s3lr0.05m2" and ClientSetting.parse(setting.name) == setting
    assert ClientSetting(4, 3, 0.05, local_batch=4).name == "b4s3lr0.05"
    with pytest.raises(ValueError, match="local_batch must divide"):
        ClientSetting(4, 3, 0.05, local_batch=3)
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    model = _model()
    client = local_training_update(model, images, labels, 3, 0.05, batches=setting.batches)
    # By hand: plain SGD on the batches in turn.
    params = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for rows in ([0, 1], [2, 3], [0, 1]):
            with torch.enable_grad():
                step = shared_gradient(model, images[rows], labels[rows])
            for n, p in params.items():
                p.sub_(0.05 * step[n])
        by_hand = {n: (start[n] - p) / 0.15 for n, p in params.items()}
        for n, p in params.items():
            p.copy_(start[n])
    full = local_training_update(model, images, labels, 3, 0.05)
    names = list(client)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    simulated = simulated_local_training(model, images, labels, names, 3, 0.05, create_graph=False,
                                         batches=setting.batches)
    functional = functional_update(model, weights, images, labels, names, 3, 0.05, setting.batches)
    for name in names:
        assert torch.allclose(client[name], by_hand[name], rtol=1e-4, atol=1e-6), name
        assert torch.allclose(simulated[name], client[name], rtol=1e-4, atol=1e-6), name
        assert torch.allclose(functional[name], client[name], rtol=1e-4, atol=1e-6), name
    assert not torch.allclose(full[names[0]], client[names[0]], rtol=1e-3)


def test_the_latent_attacks_noise_follows_each_images_mini_batch(mnist_victims):
    """FedAvg on mini-batches of a PRECODE model with the latent attack's given noise (one row per image):
    each local step's forward pass takes its own images' noise rows (the attack crashed on a shape
    mismatch before), the same as the steps done by hand."""
    from ppp.precode import given_noise

    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    model = _model(precode=PrecodeSpec(bottleneck_size=16))
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    names = [n for n, _ in model.named_parameters()]
    batches = ClientSetting(4, 2, 0.05, local_batch=2).batches
    with given_noise(model, noise):
        simulated = simulated_local_training(model, images, labels, names, 2, 0.05, create_graph=False,
                                             batches=batches)
    params = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    with torch.no_grad():
        for rows in ([0, 1], [2, 3]):
            with torch.enable_grad(), given_noise(model, noise[rows]):
                step = shared_gradient(model, images[rows], labels[rows])
            for n, p in params.items():
                total[n] += step[n] / 2
                p.sub_(0.05 * step[n])
        for n, p in params.items():
            p.copy_(start[n])
    for name in names:
        assert torch.allclose(simulated[name], total[name], rtol=1e-4, atol=1e-6), name
