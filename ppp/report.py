"""Tables from the per-victim metrics and the per-model utilities (the figures: ppp.figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ppp.figures import per_epoch
from ppp.io import atomic_path, read_json
from ppp.verdicts import Thresholds, at_most, paired_accuracy_drop, with_setting_columns  # noqa: F401 (re-exported)

# A cell: what was attacked (dataset, model, the client's update: images per update, local steps and their
# learning rate, 0.0 for FedSGD, and images per local step, 0 for all (ppp.verdicts.SETTING), the defence
# and its sigma, the model state) and by which attack.
CLIENT = ["batch_size", "local_steps", "local_lr", "local_batch"]
CELL = ["dataset", "arch", *CLIENT, "defense", "noise_scale", "attack", "model_state"]
DEFENSE_CELL = ["dataset", "arch", *CLIENT, "defense", "noise_scale", "model_state"]
# lpips: empty where off; ssim_half: SSIM of the attack's best iterate at half its budget (convergence)
RECONSTRUCTION_COLUMNS = CELL + ["victim", "update_id", "label", "label_accuracy", "mse", "psnr", "ssim",
                                 "lpips", "ssim_half"]
BOOTSTRAP_RESAMPLES = 2000
UTILITY_COLUMNS = ["dataset", "arch", "defense", "noise_scale", "test_accuracy", "test_accuracy_ci95",
                   "test_examples", "epsilon", "delta", "test_accuracy_per_epoch"]
DEFENSE_ORDER = ["none", "noise", "precode", "ppp", "ppp_encoder", "ppp_no_decoder", "dpsgd"]
PPP_VARIANTS = ["ppp", "ppp_encoder", "ppp_no_decoder"]  # "ppp" is the paper's
MODEL_CELL = ["dataset", "arch", "defense", "noise_scale"]


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def collect_reconstructions(paths: Iterable[str | Path]) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECONSTRUCTION_COLUMNS)
    frame = with_setting_columns(frame, fedavg_lr=None)  # a FedSGD job's metrics from before local_lr was a column
    return frame[RECONSTRUCTION_COLUMNS].sort_values(CELL + ["victim"], kind="stable").reset_index(drop=True)


def collect_utility(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, dict[tuple, np.ndarray]]:
    """The utility table (accuracy with a 95% normal interval over the test set, per-epoch accuracies) and
    each model's per-example correctness on the test set, keyed by (dataset, arch, defense, noise_scale),
    for paired comparisons between models."""
    rows, correct = [], {}
    for path in paths:
        metrics = read_json(path)
        key = tuple(metrics[k] for k in MODEL_CELL)
        hits = np.array([c == "1" for c in metrics.get("test_correct", "")], dtype=float)
        n = len(hits)
        accuracy = float(metrics["test_accuracy"])
        rows.append(dict(zip(MODEL_CELL, key), test_accuracy=accuracy,
                         test_accuracy_ci95=1.96 * np.sqrt(accuracy * (1 - accuracy) / n) if n else float("nan"),
                         test_examples=n,
                         epsilon=float(metrics.get("epsilon", float("nan"))),
                         delta=float(metrics.get("delta", float("nan"))),
                         test_accuracy_per_epoch=";".join(f"{a:.4f}" for a in metrics.get("test_accuracy_per_epoch", []))))
        if n:
            correct[key] = hits
    frame = pd.DataFrame(rows, columns=UTILITY_COLUMNS)
    return frame.sort_values(MODEL_CELL, kind="stable").reset_index(drop=True), correct


def learning_curves(utility: pd.DataFrame) -> dict[tuple, list[float]]:
    """The undefended model's test accuracy per epoch, per (dataset, arch): what ppp.verdicts reads to
    decide whether accuracy claims are judged (a model still learning is not)."""
    curves = {}
    for _, row in utility[(utility.defense == "none") & (utility.noise_scale == 0)].iterrows():
        curves[(row.dataset, row.arch)] = per_epoch(row.test_accuracy_per_epoch)
    return curves


def bootstrap_median_interval(values: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                              level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of the median over victims (seeded: the same values give the same
    interval)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, len(values), size=(resamples, len(values)))], axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(medians, tail)), float(np.quantile(medians, 1 - tail))


def summarize(reconstructions: pd.DataFrame, utility: pd.DataFrame, success_ssim: float) -> pd.DataFrame:
    """Mean and median of each metric per cell (SSIM and PSNR medians with a 95% bootstrap interval over
    the cell's victims), the share of victims reconstructed (SSIM >= threshold), the attack's label
    accuracy, and the strongest attack on the cell's defence (cell_strongest_*)."""
    reconstructions = with_setting_columns(reconstructions, fedavg_lr=None)  # a key: NaN would drop rows
    grouped = reconstructions.groupby(CELL, sort=False)
    summary = grouped.agg(
        victims=("victim", "count"),
        mse_mean=("mse", "mean"), mse_median=("mse", "median"),
        psnr_mean=("psnr", "mean"), psnr_median=("psnr", "median"),
        ssim_mean=("ssim", "mean"), ssim_median=("ssim", "median"),
        lpips_mean=("lpips", "mean"), lpips_median=("lpips", "median"),
        success_rate=("ssim", lambda s: float((s >= success_ssim).mean())),
        label_accuracy=("label_accuracy", "mean"),
    ).reset_index()
    intervals = []
    for _, cell in grouped:
        row = {}
        for metric in ("ssim", "psnr"):
            row[f"{metric}_median_ci_low"], row[f"{metric}_median_ci_high"] = bootstrap_median_interval(
                cell[metric].to_numpy())
        intervals.append(row)
    summary = pd.concat([summary, pd.DataFrame(intervals, index=summary.index)], axis=1)
    summary = summary.merge(utility[MODEL_CELL + ["test_accuracy", "test_accuracy_ci95", "epsilon"]], on=MODEL_CELL,
                            how="left")
    summary["success_ssim_threshold"] = success_ssim
    # Every row also names its defence cell's strongest attack (the worst case for that defence).
    keys = DEFENSE_CELL
    strongest = strongest_attacks(summary)[keys + ["strongest_attack", "strongest_psnr_median", "strongest_ssim_median"]]
    return summary.merge(strongest.rename(columns=lambda c: f"cell_{c}" if c.startswith("strongest") else c),
                         on=keys, how="left")


def strongest_attacks(summary: pd.DataFrame) -> pd.DataFrame:
    """Per defence cell (dataset, arch, client setting, defence, sigma, state): the attack with the highest
    median SSIM (ties: the higher median PSNR), its medians, and every attack tried there."""
    ranked = summary.sort_values(["ssim_median", "psnr_median"], ascending=False, kind="stable")
    keys = DEFENSE_CELL
    best = ranked.groupby(keys, sort=False).head(1).set_index(keys)
    tried = summary.groupby(keys, sort=False).attack.agg(lambda a: ";".join(sorted(a)))
    out = pd.DataFrame({
        "strongest_attack": best.attack, "strongest_psnr_median": best.psnr_median,
        "strongest_ssim_median": best.ssim_median,
        "strongest_success_rate": best.success_rate if "success_rate" in best else float("nan"),
        "attacks_tried": tried.reindex(best.index)})
    return out.reset_index()


def worst_case(summary: pd.DataFrame, verdict_table: pd.DataFrame) -> pd.DataFrame:
    """One row per defence cell: the strongest attack and its quality, whether the cell is protected
    (ppp.verdicts: holds, fails or undecided, with the strongest attack's median SSIM interval and the
    paired interval of its PSNR gap to IG on the undefended model), and the test accuracy with its
    paired drop against the undefended model and whether that drop is within `max_accuracy_drop`."""
    strongest = strongest_attacks(summary)
    reference = summary[(summary.defense == "none") & (summary.attack == "ig")].set_index(
        ["dataset", "arch", *CLIENT, "model_state"]).psnr_median
    accuracy = summary.groupby(MODEL_CELL, sort=False).test_accuracy.first()
    epsilon = summary.groupby(MODEL_CELL, sort=False).epsilon.first() if "epsilon" in summary else pd.Series(dtype=float)
    protects = verdict_table[verdict_table.claim == "protects"].set_index(DEFENSE_CELL) if len(verdict_table) else None
    rows = []
    for _, cell in strongest.iterrows():
        ref = reference.get((cell.dataset, cell.arch, *(cell[c] for c in CLIENT), cell.model_state), float("nan"))
        key = tuple(cell[k] for k in DEFENSE_CELL)
        verdict = protects.loc[key] if protects is not None and key in protects.index else None
        row = dict(cell.to_dict(), psnr_ig_none=ref,
                   protected=verdict.verdict if verdict is not None else ("fails" if cell.defense == "none" else ""),
                   test_accuracy=accuracy.get((cell.dataset, cell.arch, cell.defense, cell.noise_scale), float("nan")),
                   epsilon=epsilon.get((cell.dataset, cell.arch, cell.defense, cell.noise_scale), float("nan")))
        for column in ("ci_low", "ci_high", "psnr_gap_db", "psnr_gap_ci_low", "psnr_gap_ci_high", "converged",
                       "acc_drop", "acc_drop_ci_low", "acc_drop_ci_high"):
            name = f"strongest_ssim_median_{column}" if column.startswith("ci_") else column
            row[name] = verdict[column] if verdict is not None else float("nan")
        drop = (row["acc_drop_ci_low"], row["acc_drop_ci_high"])
        within = at_most(*drop, verdict_thresholds(verdict_table).max_accuracy_drop) if np.isfinite(drop[0]) else ""
        judged = verdict is not None and verdict["plateaued"] == True  # noqa: E712 (numpy bool, or None)
        row["plateaued"] = judged
        # Accuracy is judged only on models trained to a plateau (ppp.verdicts); elsewhere it is indicative.
        row["within_accuracy"] = within if not within or judged else "undecided"
        row["within_accuracy_indicative"] = "" if not within or judged else within
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = {d: i for i, d in enumerate(DEFENSE_ORDER)}
    frame["_order"] = frame.defense.map(lambda d: order.get(d, len(order)))
    return (frame.sort_values(["dataset", "arch", "model_state", *CLIENT, "_order", "noise_scale"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


def verdict_thresholds(verdict_table: pd.DataFrame) -> Thresholds:
    """The thresholds a verdict table was judged with (kept in its attrs by ppp.verdicts.judge)."""
    return verdict_table.attrs.get("thresholds", Thresholds())


def findings(summary: pd.DataFrame, verdict_table: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset x architecture x model state x client setting: the medians each claim of the
    paper rests on, the smallest sigma at which full noise and each PPP variant protect (the "protects"
    verdict holds), the accuracies there, and the three-valued verdict of each claim from
    `verdict_table` (ppp.verdicts.judge: F1 IG reconstructs the undefended model; F2 IG fails on
    PRECODE while the targeted attack succeeds; F3 the paper's PPP at some sigma defeats every attack,
    where some attack breaks PRECODE; F4 PPP at that sigma keeps test accuracy within
    `max_accuracy_drop`). `ppp_variants_protecting` lists every PPP variant that protects at some sigma
    with its accuracy drop decidedly within bounds, where PRECODE is broken."""
    rows = []
    setting_keys = ["dataset", "arch", "model_state", *CLIENT]
    claims = verdict_table.set_index([*setting_keys, "claim"]) if len(verdict_table) else None
    protects = verdict_table[verdict_table.claim == "protects"]
    groups = summary.groupby(setting_keys, sort=False)
    for key, cell in groups:
        dataset, arch, state, batch_size, local_steps, local_lr, local_batch = key

        def median(defense, attack, column="psnr_median", sigma=0.0):
            sel = cell[(cell.defense == defense) & (cell.attack == attack) & np.isclose(cell.noise_scale, sigma)]
            return float(sel[column].iloc[0]) if len(sel) else float("nan")

        def accuracy(defense, sigma=0.0):
            sel = cell[(cell.defense == defense) & np.isclose(cell.noise_scale, sigma)]
            return float(sel.test_accuracy.iloc[0]) if len(sel) else float("nan")

        def strongest(defense, sigma=0.0):
            at = cell[(cell.defense == defense) & np.isclose(cell.noise_scale, sigma)]
            if not len(at):
                return None
            return at.sort_values(["ssim_median", "psnr_median"], ascending=False, kind="stable").iloc[0]

        def claim(name):
            if claims is None or (*key, name) not in claims.index:
                return ""
            return claims.loc[(*key, name)].verdict

        here = protects[(protects.dataset == dataset) & (protects.arch == arch) & (protects.model_state == state)
                        & (protects.batch_size == batch_size) & (protects.local_steps == local_steps)
                        & (protects.local_lr == local_lr) & (protects.local_batch == local_batch)]
        on_precode = strongest("precode")
        row = dict(dataset=dataset, arch=arch, model_state=state, batch_size=batch_size, local_steps=local_steps,
                   local_lr=local_lr, local_batch=local_batch,
                   psnr_ig_none=median("none", "ig"), ssim_ig_none=median("none", "ig", "ssim_median"),
                   psnr_ig_precode=median("precode", "ig"), ssim_ig_precode=median("precode", "ig", "ssim_median"),
                   psnr_targeted_precode=median("precode", "ig_targeted"),
                   ssim_targeted_precode=median("precode", "ig_targeted", "ssim_median"),
                   strongest_attack_precode=on_precode.attack if on_precode is not None else "",
                   psnr_strongest_precode=float(on_precode.psnr_median) if on_precode is not None else float("nan"),
                   ssim_strongest_precode=float(on_precode.ssim_median) if on_precode is not None else float("nan"))
        precode_broken = bool(on_precode is not None
                              and on_precode.ssim_median >= verdict_thresholds(verdict_table).success_ssim)
        variants_ok = []
        for defense in ["noise"] + PPP_VARIANTS:
            noisy = here[here.defense == defense].sort_values("noise_scale")
            if defense not in ("noise", "ppp") and not len(noisy):
                continue  # a PPP variant the config does not run
            holding = noisy[noisy.verdict == "holds"]
            protecting = float(holding.noise_scale.iloc[0]) if len(holding) else float("nan")
            shown = holding.iloc[0] if len(holding) else (noisy.iloc[-1] if len(noisy) else None)
            shown_sigma = float(shown.noise_scale) if shown is not None else float("nan")
            top = strongest(defense, shown_sigma) if shown is not None else None
            row[f"{defense}_protecting_sigma"] = protecting
            row[f"{defense}_sigma_shown"] = shown_sigma
            row[f"{defense}_protects_at_shown"] = shown.verdict if shown is not None else ""
            row[f"{defense}_strongest_attack"] = top.attack if top is not None else ""
            row[f"psnr_strongest_{defense}"] = float(top.psnr_median) if top is not None else float("nan")
            row[f"ssim_strongest_{defense}"] = float(top.ssim_median) if top is not None else float("nan")
            row[f"acc_{defense}"] = accuracy(defense, shown_sigma)
            for column in ("", "_ci_low", "_ci_high"):
                row[f"acc_drop_{defense}{column}"] = float(shown[f"acc_drop{column}"]) if shown is not None \
                    else float("nan")
            if defense in PPP_VARIANTS and shown is not None and shown.verdict == "holds" \
                    and np.isfinite(shown.acc_drop_ci_high) \
                    and shown.acc_drop_ci_high <= verdict_thresholds(verdict_table).max_accuracy_drop:
                variants_ok.append(f"{defense}@{protecting:g}")
        row.update(acc_none=accuracy("none"), acc_precode=accuracy("precode"))
        f3 = claim("F3")
        less_noise = ""
        if f3:
            noise_sigma, ppp_sigma = row["noise_protecting_sigma"], row["ppp_protecting_sigma"]
            less_noise = ("fails" if f3 == "fails" else "undecided" if f3 == "undecided"
                          else "holds" if not noise_sigma <= ppp_sigma else "fails")
        row.update(
            F1_ig_leaks_undefended=claim("F1"),
            F2_targeted_breaks_precode_ig_does_not=claim("F2"),
            F3_ppp_defeats_every_attack=f3,
            F4_ppp_keeps_accuracy=claim("F4"),
            ppp_needs_less_noise=less_noise,
            ppp_variants_protecting=";".join(variants_ok) if precode_broken else "",
        )
        rows.append(row)
    return pd.DataFrame(rows)
