import numpy as np
import pandas as pd

from ppp.report import RECONSTRUCTION_COLUMNS, findings, paired_accuracy_drop, summarize, worst_case
from ppp.verdicts import judge

IMAGES = 16


def _reconstructions(cells, images=IMAGES, spread=0.01):
    """Per-image rows whose medians are the cells' (PSNR, SSIM), with a small seeded spread."""
    rng = np.random.default_rng(0)
    rows = []
    for defense, sigma, attack, psnr, ssim, _ in cells:
        offsets = rng.normal(0, 1, size=images)
        offsets -= np.median(offsets)
        for v in range(images):
            rows.append(dict(dataset="mnist", arch="lenet", batch_size=1, local_steps=1, defense=defense,
                             noise_scale=sigma, attack=attack, model_state="init", victim=v, update_id=v,
                             label=v % 10, label_accuracy=1.0, mse=0.0, psnr=psnr + 10 * spread * offsets[v],
                             ssim=ssim + spread * offsets[v], lpips=np.nan, ssim_half=ssim + spread * offsets[v]))
    return pd.DataFrame(rows, columns=RECONSTRUCTION_COLUMNS)


def _utility(cells):
    models = {(d, s): acc for d, s, _, _, _, acc in cells}
    return pd.DataFrame([dict(dataset="mnist", arch="lenet", defense=d, noise_scale=s, test_accuracy=acc,
                              test_accuracy_ci95=0.01, epsilon=np.nan,
                              test_accuracy_per_epoch="0.5;0.8;0.85;0.851;0.852") for (d, s), acc in models.items()])


def _correct(accuracy, n=1000):
    hits = np.zeros(n)
    hits[: int(round(accuracy * n))] = 1
    return hits


CELLS = [
    ("none", 0.0, "ig", 30.0, 0.95, 0.90),
    ("precode", 0.0, "ig", 10.0, 0.05, 0.90),
    ("precode", 0.0, "ig_targeted", 25.0, 0.80, 0.90),
    ("noise", 0.01, "ig", 28.0, 0.90, 0.89),
    ("noise", 0.1, "ig", 26.0, 0.45, 0.80),   # SSIM below 0.5 but only 4 dB below: does not protect
    ("noise", 1.0, "ig", 9.0, 0.02, 0.40),
    ("ppp", 0.01, "ig", 10.0, 0.05, 0.89),
    ("ppp", 0.01, "ig_targeted", 24.0, 0.70, 0.89),
    ("ppp", 0.1, "ig", 10.0, 0.05, 0.88),
    ("ppp", 0.1, "ig_targeted", 12.0, 0.10, 0.88),
    ("ppp", 1.0, "ig", 9.0, 0.02, 0.60),
    ("ppp", 1.0, "ig_targeted", 9.0, 0.02, 0.60),
]


def _study(cells, correct=True):
    reconstructions = _reconstructions(cells)
    utility = _utility(cells)
    summary = summarize(reconstructions, utility, 0.5)
    accuracies = {("mnist", "lenet", d, s): _correct(acc) for d, s, _, _, _, acc in cells} if correct else {}
    table = judge(reconstructions, accuracies, {("mnist", "lenet"): [0.5, 0.8, 0.85, 0.851, 0.852]})
    return summary, table


def test_findings_find_the_smallest_protecting_sigma_and_judge_each_claim():
    summary, table = _study(CELLS)
    row = findings(summary, table).iloc[0]
    assert row.F1_ig_leaks_undefended == "holds" and row.F2_targeted_breaks_precode_ig_does_not == "holds"
    assert row.ppp_protecting_sigma == 0.1 and row.noise_protecting_sigma == 1.0
    assert row.ppp_strongest_attack == "ig_targeted" and abs(row.psnr_strongest_ppp - 12.0) < 0.5
    assert row.F3_ppp_defeats_every_attack == "holds" and row.ppp_needs_less_noise == "holds"
    # A 2-point drop whose paired interval (over 1000 examples) lies below 3 points.
    assert abs(row.acc_drop_ppp - 0.02) < 1e-9 and row.acc_drop_ppp_ci_high < 0.03
    assert row.F4_ppp_keeps_accuracy == "holds"
    assert abs(row.acc_drop_noise - 0.50) < 1e-9


def test_a_strong_attack_on_every_sigma_means_no_protection_and_no_accuracy_claim():
    cells = [c if c[0] != "ppp" or c[2] != "ig_targeted" else (*c[:3], 26.0, 0.8, c[5]) for c in CELLS]
    summary, table = _study(cells, correct=False)
    row = findings(summary, table).iloc[0]
    assert np.isnan(row.ppp_protecting_sigma)
    assert row.ppp_sigma_shown == 1.0  # the largest sigma is shown when none protects
    assert row.F3_ppp_defeats_every_attack == "fails" and row.F4_ppp_keeps_accuracy == "fails"
    assert row.ppp_needs_less_noise == "fails"


def test_targeted_attack_that_fails_on_precode_is_no_finding():
    """Where nothing breaks PRECODE, PPP has nothing to defeat: no protection, accuracy or noise claim,
    although its sigmas 'protect' and its accuracy is fine."""
    cells = [c if c[:3] != ("precode", 0.0, "ig_targeted") else (*c[:3], 11.0, 0.1, c[5]) for c in CELLS]
    summary, table = _study(cells)
    row = findings(summary, table).iloc[0]
    assert row.ppp_protecting_sigma == 0.1 and row.acc_drop_ppp <= 0.03
    assert row.F2_targeted_breaks_precode_ig_does_not == "fails" and row.F3_ppp_defeats_every_attack == "fails"
    assert row.F4_ppp_keeps_accuracy == "fails" and row.ppp_needs_less_noise == "fails"


def test_paired_accuracy_drop_interval_is_tight_for_nearly_identical_models():
    a = _correct(0.90)
    b = a.copy()
    b[:10] = 0  # ten examples lost: one point
    drop, low, high = paired_accuracy_drop(a, b)
    assert abs(drop - 0.01) < 1e-12 and 0 < low < drop < high < 0.02
    assert np.isnan(paired_accuracy_drop(a, None)[0])


def test_an_adaptive_attack_that_breaks_ppp_removes_its_protection_and_names_itself():
    """The analytic attack reconstructs through the paper's PPP at every sigma; the variant that noises
    the encoder too protects at 0.1. The worst case per cell names the attack that was strongest."""
    cells = CELLS + [
        ("precode", 0.0, "analytic", 27.0, 0.85, 0.90),
        *[("ppp", s, "analytic", 26.0, 0.80, acc) for s, acc in ((0.01, 0.89), (0.1, 0.88), (1.0, 0.60))],
        ("ppp_encoder", 0.01, "analytic", 20.0, 0.55, 0.89),
        ("ppp_encoder", 0.1, "analytic", 11.0, 0.08, 0.885),
        ("ppp_encoder", 0.1, "ig_targeted", 12.0, 0.10, 0.885),
    ]
    summary, table = _study(cells)
    row = findings(summary, table).iloc[0]
    assert row.strongest_attack_precode == "analytic"
    assert np.isnan(row.ppp_protecting_sigma) and row.ppp_strongest_attack == "analytic"
    assert row.F3_ppp_defeats_every_attack == "fails" and row.F4_ppp_keeps_accuracy == "fails"
    assert row.ppp_encoder_protecting_sigma == 0.1 and row.ppp_variants_protecting == "ppp_encoder@0.1"
    worst = worst_case(summary, table).set_index(["defense", "noise_scale"])
    assert worst.loc[("ppp", 0.1)].strongest_attack == "analytic" and worst.loc[("ppp", 0.1)].protected == "fails"
    assert worst.loc[("ppp_encoder", 0.1)].protected == "holds"
    assert worst.loc[("ppp_encoder", 0.1)].within_accuracy == "holds"
    assert worst.loc[("ppp_encoder", 0.1)].attacks_tried == "analytic;ig_targeted"
    assert worst.loc[("none", 0.0)].protected == "fails" and worst.loc[("noise", 1.0)].protected == "holds"
    low, high = worst.loc[("ppp", 0.1)][["strongest_ssim_median_ci_low", "strongest_ssim_median_ci_high"]]
    assert low <= worst.loc[("ppp", 0.1)].strongest_ssim_median <= high
    assert list(worst.index.get_level_values(0).unique()) == ["none", "noise", "precode", "ppp", "ppp_encoder"]


def test_fedavg_at_two_local_learning_rates_stays_two_settings_in_every_table():
    """The same FedAvg update (1 image, 2 steps) at lr 0.1 and at 0.01, where the targeted attack breaks PPP
    at sigma 0.1: findings, the worst case and the verdicts keep one row per rate, keyed by local_lr."""
    from ppp.report import CELL, RECONSTRUCTION_COLUMNS as COLUMNS

    assert COLUMNS[:5] == ["dataset", "arch", "batch_size", "local_steps", "local_lr"] and "local_lr" in CELL
    broken = [c if c[:3] != ("ppp", 0.1, "ig_targeted") else (*c[:3], 26.0, 0.8, c[5]) for c in CELLS]
    reconstructions = pd.concat([_reconstructions(CELLS).assign(local_steps=2, local_lr=0.1),
                                 _reconstructions(broken).assign(local_steps=2, local_lr=0.01)], ignore_index=True)
    summary = summarize(reconstructions, _utility(CELLS), 0.5)
    accuracies = {("mnist", "lenet", d, s): _correct(acc) for d, s, _, _, _, acc in CELLS}
    table = judge(reconstructions, accuracies, {("mnist", "lenet"): [0.5, 0.8, 0.85, 0.851, 0.852]})
    rows = findings(summary, table).set_index("local_lr")
    assert sorted(rows.index) == [0.01, 0.1]
    assert rows.loc[0.1].ppp_protecting_sigma == 0.1 and rows.loc[0.01].ppp_protecting_sigma == 1.0
    worst = worst_case(summary, table).set_index(["local_lr", "defense", "noise_scale"])
    assert worst.loc[(0.1, "ppp", 0.1)].protected == "holds" and worst.loc[(0.01, "ppp", 0.1)].protected == "fails"
    assert len(worst) == 2 * len(worst_case(*_study(CELLS)))
    assert (summary.groupby("local_lr").victims.sum() == IMAGES * len(CELLS)).all()


REPO_CONFIG = __import__("pathlib").Path(__file__).resolve().parent.parent / "config" / "config.yaml"
