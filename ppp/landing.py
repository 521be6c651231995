"""The report's landing page: the preset that ran and the study's answer, as reStructuredText.

Written from the study's own outputs (results/tables/verdicts.csv) and its config, never by hand; the
workflow description (workflow/report/workflow.rst) includes it, so the first thing a reader of the
Snakemake report sees is what was asked, what ran and what came out.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ppp.figures import DEFENSE_ORDER, client_label, defense_label
from ppp.verdicts import with_setting_columns

CLAIM_TITLES = {  # the claim, then the statistic its cells show
    "F1": "F1 IG leaks: SSIM",
    "F2": "F2 PRECODE stops IG only: targeted − IG, dB",
    "F3": "F3 PPP stops all: SSIM",
    "F4": "F4 PPP keeps accuracy: drop",
}
# local_lr and local_batch: ppp.verdicts.SETTING
SETTING = ["dataset", "arch", "batch_size", "local_steps", "local_lr", "local_batch", "model_state"]


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def interval(estimate, low, high, digits: int = 2) -> str:
    """"0.82 [0.75, 0.88]", or the estimate alone where the verdict has no interval (too few units)."""
    estimate, low, high = _number(estimate), _number(low), _number(high)
    if not np.isfinite(estimate):
        return ""
    text = f"{estimate:.{digits}f}"
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def verdict_cell(row: pd.Series) -> str:
    """One verdict in bold, then its statistic with the 95% interval (the column says which statistic)."""
    statistic = str(row.get("statistic", ""))
    digits = 3 if statistic.startswith("paired test accuracy") else 1 if "PSNR" in statistic else 2
    parts = [f"**{row.verdict}**"]
    shown = interval(row.estimate, row.ci_low, row.ci_high, digits)
    if shown:
        parts.append(shown)
    if isinstance(row.get("indicative"), str) and row.indicative:
        parts.append(f"(indicative: {row.indicative})")
    return " ".join(parts)


def _list_table(title: str, header: list[str], rows: list[list[str]], widths: str = "auto") -> list[str]:
    lines = [f".. list-table:: {title}", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header] + rows:
        for k, cell in enumerate(row):
            text = " ".join(str(cell).split()) or "–"
            lines.append(f"   {'*' if k == 0 else ' '} - {text}")
    return lines + [""]


def _setting_name(key: tuple) -> str:
    dataset, arch, batch_size, local_steps, local_lr, local_batch, state = key
    return f"{dataset} / {arch}, {client_label(batch_size, local_steps, local_lr, local_batch)}" + (
        "" if state == "init" else f", {state} model")


def preset_lines(config: Mapping) -> list[str]:
    """What ran: datasets, architectures, defences, attacks, client settings, images per cell, budgets."""
    from ppp.config import attack_options, client_settings, training_options, victims_per_cell

    archs = list(config.get("archs", []))
    attacks = list(config.get("attacks", []))
    lines = [f"- **Datasets**: {', '.join(config.get('datasets', {}))}; **architectures**: {', '.join(archs)}; "
             f"**model state**: {', '.join(config.get('model_states', ['init']))}.",
             f"- **Defences**: {', '.join(config.get('defenses', []))}; **attacks**: {', '.join(attacks)}."]
    for arch in archs:
        settings = client_settings(config, arch)
        clients = "; ".join(client_label(s.images, s.local_steps, s.local_lr, s.local_batch) for s in settings)
        budgets = ", ".join(f"{a} {attack_options(config, arch, a, settings[0].name).get('iterations', '?')}"
                            for a in attacks)
        training = (f"{training_options(config, arch).get('epochs', '?')} training epochs"
                    if config.get("training", {}).get("enabled", True) else "no training (accuracy not judged)")
        first = settings[0]
        at = client_label(first.images, first.local_steps, first.local_lr, first.local_batch)
        lines.append(f"- **{arch}**: client updates {clients}; {victims_per_cell(config, arch)} images per cell; "
                     f"attack iterations (at {at}) "
                     f"{budgets}; {training}.")
    return lines


def landing_rst(verdicts: pd.DataFrame, config: Mapping | None = None) -> str:
    """The landing page's preset and answer: a count of the verdicts, the claims F1-F4 per setting and
    whether each defence protects per setting, every verdict with its statistic and 95% interval."""
    lines = []
    if config is not None:
        lines += ["The preset that ran", "~~~~~~~~~~~~~~~~~~~", ""] + preset_lines(config) + [""]
    lines += ["The answer", "~~~~~~~~~~", ""]
    if verdicts.empty:
        return "\n".join(lines + ["No verdicts: the study judged no cell.", ""])
    verdicts = with_setting_columns(verdicts)
    counts = verdicts.verdict.value_counts()
    lines += [f"{len(verdicts)} verdicts: **{counts.get('holds', 0)} hold**, **{counts.get('fails', 0)} fail**, "
              f"**{counts.get('undecided', 0)} undecided** (a verdict is decided only when its 95% interval lies "
              "wholly on one side of its threshold; the full table is ``verdicts.csv``, the figures below show "
              "the numbers behind it).", ""]
    settings = list(dict.fromkeys(verdicts[SETTING].itertuples(index=False, name=None)))
    claims = [c for c in CLAIM_TITLES if c in set(verdicts.claim)]
    rows = []
    for key in settings:
        here = verdicts[(verdicts[SETTING].apply(tuple, axis=1) == key)]
        row = [_setting_name(key)]
        for claim in claims:
            found = here[here.claim == claim]
            row.append(verdict_cell(found.iloc[0]) if len(found) else "")
        rows.append(row)
    if claims:
        lines += _list_table("The paper's claims (verdict, statistic [95% interval])", ["setting"] + [CLAIM_TITLES[c] for c in
                                                                                          claims], rows)
    protects = verdicts[verdicts.claim == "protects"]
    if len(protects):
        # One row per setting, one column per defence; a cell lists the defence's sigmas there (the grid
        # of sigmas may differ between architectures).
        defences = sorted(set(protects.defense), key=lambda d: DEFENSE_ORDER.index(d) if d in DEFENSE_ORDER else 99)
        shown = [key for key in settings if len(protects[protects[SETTING].apply(tuple, axis=1) == key])]
        rows = []
        for key in shown:
            here = protects[protects[SETTING].apply(tuple, axis=1) == key]
            row = [_setting_name(key)]
            for defense in defences:
                cells = here[here.defense == defense].sort_values("noise_scale")
                row.append("; ".join((f"σ={float(c.noise_scale):g} " if float(c.noise_scale) else "") + verdict_cell(c)
                                     for _, c in cells.iterrows()))
            rows.append(row)
        lines += _list_table("Does the defence protect? (median SSIM of the strongest attack, 95% interval; "
                             "which attack: worst_case.png)",
                             ["setting"] + defences, rows)
    return "\n".join(lines)
