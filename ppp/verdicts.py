"""Verdicts: thresholds, bootstrap intervals and the three-valued decision behind every claim.

A claim compares a statistic with a threshold (a median SSIM with 0.5, a PSNR gap with 6 dB, an accuracy
drop with 3 points). It *holds* when the whole 95% interval of the statistic lies on the claimed side,
*fails* when the whole interval lies on the other side, and is *undecided* otherwise. Claims made of
several parts combine in Kleene's three-valued logic: an AND fails when one part fails and holds when
every part holds; an OR holds when one part holds and fails when every part fails.

Intervals are percentile bootstraps over the unit the images were sent in: one image per update, or
one client update where several images share it (their reconstructions are not independent). Every
cell of a client setting is resampled with the same draws of units, so the difference of two cells on
the same images (IG on the undefended model against an attack on a defence) is a paired interval.

A claim that an attack *fails* (a defence resists it, or it does not reconstruct the undefended model) also
needs the attack to have converged: on the images the attack job
ran again at half the budget (`ssim_half`; attack.convergence_images, a cell's first images), the
median SSIM gained from half to the full budget must be at most `max_convergence_gain`, or the claim is
undecided. Where returns diminish, the last doubling's gain bounds the next one's, so this stands for
"twice the iterations raise the median SSIM by at most 0.05" (benchmarks/README.md, "Convergence").
The half-way iterate of the full run would not do: the learning rate decays at 3/8, 5/8 and 7/8 of the
budget, so a run gains little after its middle whatever a longer run would reach.

Accuracy claims are judged only on models trained to a plateau (`plateaued`); elsewhere they are
undecided, and the verdict they would have had is kept as `indicative`.

This module reads metrics only; it never reaches back into attacks or training.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, fields
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"
VERDICTS = (HOLDS, FAILS, UNDECIDED)

# A client setting: images per update, local steps and, for FedAvg, the local learning rate (0.0 for FedSGD,
# where one step's gradient does not depend on it), so FedAvg at two rates on one architecture are two settings,
# and the images per local step (0: all of the update's, full batch; FedAvg on mini-batches otherwise).
SETTING = ["dataset", "arch", "model_state", "batch_size", "local_steps", "local_lr", "local_batch"]
# Tables written before local_lr joined the key lack the column; their FedAvg settings ran at the presets'
# client.local_lr of the time, 0.1 (config/config.yaml at e127164, the runs of docs/results/).
LEGACY_FEDAVG_LR = 0.1
CLAIMS = {
    "F1": "IG reconstructs the undefended model (median SSIM >= success_ssim); where a setting runs no IG, "
          "its strongest attack on the undefended model",
    "F2": "IG fails on PRECODE, the targeted attack succeeds and beats it by >= margin_db",
    "F3": "where some attack breaks PRECODE, the paper's PPP at some sigma of the grid defeats every attack",
    "F4": "PPP at that sigma keeps test accuracy within max_accuracy_drop of the undefended model",
    "protects": "every attack tried fails: median SSIM < success_ssim and >= margin_db below IG on the "
                "undefended model (where a setting runs no IG: its strongest attack there)",
}
COLUMNS = SETTING + ["claim", "defense", "noise_scale", "verdict", "attack", "statistic", "estimate", "ci_low",
                     "ci_high", "threshold", "psnr_gap_db", "psnr_gap_ci_low", "psnr_gap_ci_high",
                     "ssim_gain_last_half", "converged", "acc_drop", "acc_drop_ci_low", "acc_drop_ci_high",
                     "plateaued", "indicative", "units", "images", "detail"]


def with_setting_columns(frame: pd.DataFrame, fedavg_lr: float | None = LEGACY_FEDAVG_LR) -> pd.DataFrame:
    """The frame with the client setting's later key columns where it lacks them or a value is missing:
    local_lr (after local_steps) 0.0 for FedSGD rows, `fedavg_lr` for FedAvg rows (None: an error, the rate
    being unknown); local_batch (after local_lr) 0, full batch, the only kind before it was a column. The noise
    scale is a float (a table with no noisy cell reads it as integers, which would not key against another's)."""
    if "noise_scale" in frame.columns and frame["noise_scale"].dtype != float:
        frame = frame.assign(noise_scale=frame["noise_scale"].astype(float))
    keys = ["local_lr", "local_batch"]
    if set(keys) <= set(frame.columns) and not frame[keys].isna().to_numpy().any():
        return frame
    frame = frame.copy()
    given = frame["local_lr"] if "local_lr" in frame.columns else pd.Series(np.nan, index=frame.index, dtype=float)
    fedsgd = pd.to_numeric(frame.local_steps) == 1
    if fedavg_lr is None and (given.isna() & ~fedsgd).any():
        raise ValueError("FedAvg rows without a local_lr: tables from before a setting carried its local lr; "
                         "evaluate them again")
    missing = pd.Series(np.where(fedsgd, 0.0, np.nan if fedavg_lr is None else fedavg_lr), index=frame.index)
    filled = given.astype(float).fillna(missing)
    batch = frame["local_batch"] if "local_batch" in frame.columns else pd.Series(0, index=frame.index)
    frame = frame.drop(columns=["local_lr", "local_batch"], errors="ignore")
    frame.insert(frame.columns.get_loc("local_steps") + 1, "local_lr", filled.astype(float))
    frame.insert(frame.columns.get_loc("local_lr") + 1, "local_batch", pd.to_numeric(batch).fillna(0).astype(int))
    return frame


@dataclass(frozen=True)
class Thresholds:
    """When an attack works or fails on a cell, when a defence protects, and how sure that must be.

    An attack works when its median SSIM reaches `success_ssim`. A defence protects when every attack
    tried on it stays below `success_ssim` and at least `margin_db` below the median PSNR that Inverting
    Gradients reaches on the undefended model at the same client setting. The accuracy claim holds when
    the paired drop against the undefended model is at most `max_accuracy_drop`. Each decision needs the
    `level` bootstrap interval (`resamples` draws) on one side of its threshold, from at least
    `min_units` resampled units (fewer give no interval: undecided). A model has plateaued
    when the best test accuracy of its last `plateau_epochs` epochs is less than `plateau_gain` above the
    best before them."""

    success_ssim: float = 0.5
    margin_db: float = 6.0
    max_accuracy_drop: float = 0.03
    level: float = 0.95
    resamples: int = 2000
    min_units: int = 4  # fewer units (images, or updates) give no interval: every verdict on them is undecided
    max_convergence_gain: float = 0.05
    plateau_epochs: int = 2
    plateau_gain: float = 0.005

    @classmethod
    def from_report(cls, report_section: Mapping) -> "Thresholds":
        """The thresholds a preset's `report` section sets; its other keys (figure options) are not thresholds."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in report_section.items() if k in names})


def all_of(parts: Iterable[str]) -> str:
    """Kleene AND: fails if any part fails, holds if every part holds (and there is one)."""
    parts = list(parts)
    if FAILS in parts:
        return FAILS
    return HOLDS if parts and all(p == HOLDS for p in parts) else UNDECIDED


def any_of(parts: Iterable[str]) -> str:
    """Kleene OR: holds if any part holds, fails if every part fails (none at all: fails)."""
    parts = list(parts)
    if HOLDS in parts:
        return HOLDS
    return FAILS if all(p == FAILS for p in parts) else UNDECIDED


def compare(low: float, high: float, threshold: float, at_least: bool) -> str:
    """The claim "statistic >= threshold" (at_least) or "statistic < threshold" from its interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNDECIDED
    above, below = low >= threshold, high < threshold
    if at_least:
        return HOLDS if above else FAILS if below else UNDECIDED
    return HOLDS if below else FAILS if above else UNDECIDED


def at_most(low: float, high: float, threshold: float) -> str:
    """The claim "statistic <= threshold" from its interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNDECIDED
    return HOLDS if high <= threshold else FAILS if low > threshold else UNDECIDED


def plateaued(per_epoch: Sequence[float], thresholds: Thresholds) -> bool:
    """Whether a learning curve has levelled off: its last `plateau_epochs` epochs gained less than
    `plateau_gain` over the best accuracy before them."""
    curve = [float(a) for a in per_epoch if np.isfinite(a)]
    k = thresholds.plateau_epochs
    if len(curve) <= k:
        return False
    return max(curve[-k:]) - max(curve[:-k]) < thresholds.plateau_gain


def paired_accuracy_drop(reference: np.ndarray | None, other: np.ndarray | None) -> tuple[float, float, float]:
    """Accuracy of `reference` minus that of `other` on the same test examples, with a 95% interval from
    the per-example differences (paired, so it is far tighter than two separate intervals)."""
    if reference is None or other is None or len(reference) != len(other) or not len(reference):
        return float("nan"), float("nan"), float("nan")
    differences = reference - other
    mean = float(differences.mean())
    half = 1.96 * float(differences.std(ddof=1)) / np.sqrt(len(differences)) if len(differences) > 1 else 0.0
    return mean, mean - half, mean + half


class SettingSample:
    """The images of one client setting (every cell attacked the same victims in the same updates),
    resampled by update with one set of draws shared by every cell."""

    def __init__(self, frame: pd.DataFrame, key: tuple, thresholds: Thresholds):
        self.units = sorted(frame.update_id.unique())
        self.index = {u: i for i, u in enumerate(self.units)}
        # Seeded by the setting without its lr and, at full batch, its local_batch (as before they joined the
        # key, so earlier tables' draws stay): FedAvg at two rates draws the same updates, as every cell of a
        # setting does.
        seed = zlib.crc32(repr(tuple(str(k) for k, c in zip(key, SETTING)
                                     if c != "local_lr" and not (c == "local_batch" and int(k) == 0))).encode())
        self.draws = np.random.default_rng(seed).integers(0, len(self.units),
                                                          size=(thresholds.resamples, len(self.units)))
        self.tail = (1 - thresholds.level) / 2
        self.enough = len(self.units) >= thresholds.min_units

    def matrix(self, cell: pd.DataFrame, metric: str) -> np.ndarray:
        """(units, images per unit) of a cell's metric; NaN where a unit lacks the cell's image."""
        width = int(cell.groupby("update_id").size().max()) if len(cell) else 1
        values = np.full((len(self.units), width), np.nan)
        for unit, group in cell.sort_values("victim").groupby("update_id"):
            row = group[metric].to_numpy(dtype=float)
            values[self.index[unit], :len(row)] = row
        return values

    def resampled_medians(self, cell: pd.DataFrame, metric: str) -> np.ndarray:
        values = self.matrix(cell, metric)
        drawn = values[self.draws].reshape(len(self.draws), -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw of units without this cell's images
            return np.nanmedian(drawn, axis=1)

    def _interval(self, draws: np.ndarray) -> tuple[float, float]:
        draws = draws[np.isfinite(draws)]
        if not len(draws) or not self.enough:
            return float("nan"), float("nan")
        return float(np.quantile(draws, self.tail)), float(np.quantile(draws, 1 - self.tail))

    def median(self, cell: pd.DataFrame, metric: str) -> tuple[float, float, float]:
        """The cell's median over its images, with the bootstrap interval."""
        values = cell[metric].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        estimate = float(np.median(values)) if len(values) else float("nan")
        return (estimate, *self._interval(self.resampled_medians(cell, metric)))

    def difference(self, first: pd.DataFrame, second: pd.DataFrame, metric: str) -> tuple[float, float, float]:
        """median(first) - median(second) on the same units, with its paired bootstrap interval."""
        estimate = self.median(first, metric)[0] - self.median(second, metric)[0]
        draws = self.resampled_medians(first, metric) - self.resampled_medians(second, metric)
        return (float(estimate), *self._interval(draws))


@dataclass
class AttackCell:
    """One attack on one defence cell: its statistics and the three-valued parts of its verdicts."""

    attack: str
    ssim: tuple[float, float, float]
    psnr: tuple[float, float, float]
    gap: tuple[float, float, float]  # IG on the undefended model minus this attack, median PSNR (dB)
    gain: float  # median SSIM gained from half the budget to the full one (the checked images)
    converged: bool | None
    works: str  # median SSIM >= success_ssim
    resists: str  # the attack fails: below success_ssim and margin_db under the reference (and converged)


def _attack_cell(sample: SettingSample, cell: pd.DataFrame, reference: pd.DataFrame | None, attack: str,
                 t: Thresholds, reference_works: str = HOLDS) -> AttackCell:
    ssim, psnr = sample.median(cell, "ssim"), sample.median(cell, "psnr")
    gap = sample.difference(reference, cell, "psnr") if reference is not None else (np.nan,) * 3
    gain, converged = float("nan"), None
    checked = cell[cell.ssim_half.notna()] if "ssim_half" in cell else cell.iloc[:0]
    if len(checked):  # the same images at the full and at half the budget
        gain = float(np.median(checked.ssim.to_numpy(float)) - np.median(checked.ssim_half.to_numpy(float)))
        converged = bool(gain <= t.max_convergence_gain)
    # The margin below the undefended model means something only where the attack works there; where it
    # does not (LeNet's FedAvg updates and the head attack), a failing attack decides nothing.
    below_reference = compare(gap[1], gap[2], t.margin_db, at_least=True) if reference_works == HOLDS else UNDECIDED
    resists = all_of([compare(ssim[1], ssim[2], t.success_ssim, at_least=False), below_reference])
    if resists == HOLDS and not converged:
        resists = UNDECIDED  # an attack still improving may yet succeed
    works = compare(ssim[1], ssim[2], t.success_ssim, at_least=True)
    if works == FAILS and converged is False:
        works = UNDECIDED  # the same: "this attack does not reconstruct" needs an attack that has stopped improving
    return AttackCell(attack, ssim, psnr, gap, gain, converged, works, resists)


def _fmt(name: str, value: tuple[float, float, float], unit: str = "") -> str:
    return f"{name} {value[0]:.2f}{unit} [{value[1]:.2f}, {value[2]:.2f}]"


def reference_cell(cells: dict[tuple, pd.DataFrame]) -> pd.DataFrame | None:
    """The attack on the undefended model that every defence is measured against: IG (the paper's), or
    where a client setting runs no IG (LeNet's batches: the head attack), its strongest attack there."""
    if ("none", 0.0, "ig") in cells:
        return cells[("none", 0.0, "ig")]
    undefended = [c for (d, _, _), c in cells.items() if d == "none"]
    if not undefended:
        return None
    return max(undefended, key=lambda c: (float(np.median(c.ssim)), float(np.median(c.psnr))))


def judge(reconstructions: pd.DataFrame, correct: dict[tuple, np.ndarray] | None = None,
          curves: dict[tuple, Sequence[float]] | None = None, thresholds: Thresholds = Thresholds()) -> pd.DataFrame:
    """Every claim of the study as a row: F1-F4 per client setting and "protects" per defence cell.

    `reconstructions`: one row per image and cell (ppp.report.RECONSTRUCTION_COLUMNS, with `ssim_half`
    where the attacks recorded their half-budget iterate). `correct`: per (dataset, arch, defense, sigma)
    the model's per-example test correctness. `curves`: per (dataset, arch) the undefended model's test
    accuracy per epoch, from which `plateaued` decides whether accuracy claims are judged."""
    t, correct, curves = thresholds, correct or {}, curves or {}
    reconstructions = with_setting_columns(reconstructions, fedavg_lr=None)
    rows: list[dict] = []
    for key, frame in reconstructions.groupby(SETTING, sort=True):
        dataset, arch = key[0], key[1]
        setting = dict(zip(SETTING, key))
        sample = SettingSample(frame, key, t)
        cells = {k: c for k, c in frame.groupby(["defense", "noise_scale", "attack"], sort=True)}
        reference = reference_cell(cells)
        reference_works = HOLDS
        if reference is not None:
            reference_key = ("none", 0.0, str(reference.attack.iloc[0]))
            reference_works = _attack_cell(sample, reference, None, reference_key[2], t).works
        stats: dict[tuple, AttackCell] = {k: _attack_cell(sample, c, reference, k[2], t, reference_works)
                                          for k, c in cells.items()}
        units = len(sample.units)
        images = int(frame.groupby(["defense", "noise_scale", "attack"]).size().max())
        curve = curves.get((dataset, arch))
        is_plateau = plateaued(curve, t) if curve is not None and len(curve) else None

        def base(claim: str, defense: str = "", sigma: float = 0.0) -> dict:
            return dict(setting, claim=claim, defense=defense, noise_scale=sigma, units=units, images=images,
                        plateaued=is_plateau)

        def accuracy(defense: str, sigma: float) -> tuple[float, float, float]:
            return paired_accuracy_drop(correct.get((dataset, arch, "none", 0.0)),
                                        correct.get((dataset, arch, defense, sigma)))

        # "protects", per defence cell: every attack tried there fails.
        defence_cells = sorted({(d, s) for d, s, _ in cells if d != "none"})
        protects: dict[tuple, str] = {}
        for defense, sigma in defence_cells:
            attacks = [stats[(defense, sigma, a)] for d, s, a in cells if (d, s) == (defense, sigma)]
            strongest = max(attacks, key=lambda a: (a.ssim[0], a.psnr[0]))
            verdict = all_of(a.resists for a in attacks)
            protects[(defense, sigma)] = verdict
            drop = accuracy(defense, sigma)
            rows.append(dict(
                base("protects", defense, sigma), verdict=verdict, attack=strongest.attack,
                statistic="median SSIM of the strongest attack", estimate=strongest.ssim[0],
                ci_low=strongest.ssim[1], ci_high=strongest.ssim[2], threshold=t.success_ssim,
                psnr_gap_db=strongest.gap[0], psnr_gap_ci_low=strongest.gap[1], psnr_gap_ci_high=strongest.gap[2],
                ssim_gain_last_half=strongest.gain, converged=strongest.converged,
                acc_drop=drop[0], acc_drop_ci_low=drop[1], acc_drop_ci_high=drop[2],
                detail="; ".join(f"{a.attack}: {_fmt('SSIM', a.ssim)}, {_fmt('gap', a.gap, ' dB')}, "
                                 f"gain {a.gain:.2f} -> {a.resists}" for a in attacks)))

        # F1: IG (or the setting's strongest attack, where it runs no IG) reconstructs the undefended model.
        reference_attack = None if reference is None else str(reference.attack.iloc[0])
        ig_none = stats.get(("none", 0.0, reference_attack))
        if ig_none is not None:
            rows.append(dict(base("F1", "none"), verdict=ig_none.works, attack=reference_attack,
                             statistic="median SSIM", estimate=ig_none.ssim[0], ci_low=ig_none.ssim[1],
                             ci_high=ig_none.ssim[2], threshold=t.success_ssim,
                             ssim_gain_last_half=ig_none.gain, converged=ig_none.converged,
                             detail=_fmt(f"{reference_attack} on none: SSIM", ig_none.ssim)))

        # F2: IG fails on PRECODE, the targeted attack works and beats IG by margin_db.
        ig_pre, targeted = stats.get(("precode", 0.0, "ig")), stats.get(("precode", 0.0, "ig_targeted"))
        if ig_pre is not None and targeted is not None:
            ig_fails = compare(ig_pre.ssim[1], ig_pre.ssim[2], t.success_ssim, at_least=False)
            if ig_fails == HOLDS and not ig_pre.converged:
                ig_fails = UNDECIDED
            beat = sample.difference(cells[("precode", 0.0, "ig_targeted")], cells[("precode", 0.0, "ig")], "psnr")
            beats = compare(beat[1], beat[2], t.margin_db, at_least=True)
            if beats == FAILS and targeted.converged is False:
                beats = UNDECIDED  # a targeted attack still improving may yet pull ahead of IG
            rows.append(dict(base("F2", "precode"), verdict=all_of([ig_fails, targeted.works, beats]),
                             attack="ig_targeted", statistic="median PSNR, targeted minus IG (dB)",
                             estimate=beat[0], ci_low=beat[1], ci_high=beat[2], threshold=t.margin_db,
                             ssim_gain_last_half=ig_pre.gain, converged=ig_pre.converged,
                             detail=f"IG fails: {ig_fails} ({_fmt('SSIM', ig_pre.ssim)}); targeted works: "
                                    f"{targeted.works} ({_fmt('SSIM', targeted.ssim)}); beats IG by "
                                    f"{t.margin_db:g} dB: {beats}"))

        # F3: where some attack breaks PRECODE, PPP at some sigma defeats every attack; F4: its accuracy.
        on_precode = [s for (d, _, _), s in stats.items() if d == "precode"]
        ppp_sigmas = sorted(s for d, s in defence_cells if d == "ppp")
        if on_precode and ppp_sigmas:
            broken = any_of(a.works for a in on_precode)
            by_sigma = [protects[("ppp", s)] for s in ppp_sigmas]
            f3 = all_of([broken, any_of(by_sigma)])
            if reference_works != HOLDS and f3 == FAILS and broken == FAILS:
                f3 = UNDECIDED  # no attack works here, even undefended: nothing to defend against is shown
            chosen = next((s for s, v in zip(ppp_sigmas, by_sigma) if v == HOLDS),
                          next((s for s, v in zip(ppp_sigmas, by_sigma) if v == UNDECIDED), ppp_sigmas[-1]))
            at = [stats[(d, s, a)] for d, s, a in cells if (d, s) == ("ppp", chosen)]
            strongest = max(at, key=lambda a: (a.ssim[0], a.psnr[0]))
            strongest_precode = max(on_precode, key=lambda a: (a.ssim[0], a.psnr[0]))
            rows.append(dict(base("F3", "ppp", chosen), verdict=f3, attack=strongest.attack,
                             statistic="median SSIM of the strongest attack on PPP", estimate=strongest.ssim[0],
                             ci_low=strongest.ssim[1], ci_high=strongest.ssim[2], threshold=t.success_ssim,
                             psnr_gap_db=strongest.gap[0], psnr_gap_ci_low=strongest.gap[1],
                             psnr_gap_ci_high=strongest.gap[2], ssim_gain_last_half=strongest.gain,
                             converged=strongest.converged,
                             detail=f"PRECODE broken: {broken} ({strongest_precode.attack} "
                                    f"{_fmt('SSIM', strongest_precode.ssim)}); PPP protects per sigma: "
                                    + ", ".join(f"{s:g} {v}" for s, v in zip(ppp_sigmas, by_sigma))))
            drop = accuracy("ppp", chosen)
            accuracy_kept = at_most(drop[1], drop[2], t.max_accuracy_drop)
            f4, indicative = all_of([f3, accuracy_kept]), ""
            if f3 != FAILS and is_plateau is not True:
                indicative, f4 = f4, UNDECIDED  # accuracy is not judged on a model still learning
            rows.append(dict(base("F4", "ppp", chosen), verdict=f4, attack=strongest.attack,
                             statistic="paired test accuracy drop against the undefended model",
                             estimate=drop[0], ci_low=drop[1], ci_high=drop[2], threshold=t.max_accuracy_drop,
                             acc_drop=drop[0], acc_drop_ci_low=drop[1], acc_drop_ci_high=drop[2],
                             indicative=indicative,
                             detail=f"F3 {f3}; drop at sigma {chosen:g} within {t.max_accuracy_drop:g}: "
                                    f"{accuracy_kept}" + ("" if is_plateau else
                                                           "; the undefended model has not plateaued: indicative")))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["indicative"] = table.indicative.astype(object).where(table.indicative.notna(), "")
    order = {c: i for i, c in enumerate(["F1", "F2", "F3", "F4", "protects"])}
    table["_order"] = table.claim.map(order)
    table = (table.sort_values([*SETTING, "_order", "defense", "noise_scale"], kind="stable")
             .drop(columns="_order").reset_index(drop=True))
    table.attrs["thresholds"] = t
    return table


def counts(table: pd.DataFrame) -> dict[str, int]:
    """How many verdicts hold, fail and are undecided."""
    return {v: int((table.verdict == v).sum()) for v in VERDICTS}


def contradictions(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Claims that hold in one table and fail in the other (two victim draws of the same study)."""
    keys = SETTING + ["claim", "defense", "noise_scale"]
    first, second = with_setting_columns(first), with_setting_columns(second)
    both = first[keys + ["verdict"]].merge(second[keys + ["verdict"]], on=keys, suffixes=("_first", "_second"))
    clash = ((both.verdict_first == HOLDS) & (both.verdict_second == FAILS)) | (
        (both.verdict_first == FAILS) & (both.verdict_second == HOLDS))
    return both[clash].reset_index(drop=True)
