"""The study's answer as markdown, from the verdict tables (results/tables/verdicts.csv) of two victim draws.

Two tables: the short answer (per client setting, whether the undefended model leaks and whether each
defence protects, both draws in one cell) for the README, and every claim side by side for docs/results.md.
tools/results_page.py writes both; benchmarks/verdict_stability.py prints the second.

Reads verdict tables only (ppp/verdicts.py names their columns); any column may hold NaN. Tables from before
a setting carried its local lr (or its images per local step) lack those columns:
ppp.verdicts.with_setting_columns fills them.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from ppp.verdicts import FAILS, HOLDS, SETTING, VERDICTS, contradictions, with_setting_columns

KEYS = SETTING + ["claim", "defense", "noise_scale"]
NOT_RUN = "(not run)"
ANSWER_START, ANSWER_END = "<!-- answer:start -->", "<!-- answer:end -->"
# Columns of the short answer, in this order; a defence not named here follows them.
DEFENCE_COLUMNS = {"precode": "PRECODE", "ppp": "paper's PPP", "ppp_encoder": "ppp_encoder",
                   "ppp_no_decoder": "ppp_no_decoder", "noise": "full noise", "dpsgd": "DP-SGD"}
PROTECTS_WORDS = {HOLDS: "protects", FAILS: "fails", "undecided": "undecided"}
LEAKS_WORDS = {HOLDS: "leaks", FAILS: "not reconstructed", "undecided": "undecided"}


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _interval(low, high, digits: int) -> str:
    return f" [{float(low):.{digits}f}, {float(high):.{digits}f}]" if _finite(low) and _finite(high) else ""


def _text(value) -> str:
    """A string column's value, or "" where the CSV had nothing (NaN)."""
    return value if isinstance(value, str) else ""


def claim_cell(row) -> str:
    """One claim of one draw: the verdict in bold, its statistic with the 95% interval, the strongest
    attack and the PSNR gap to the undefended model where they apply; "(not run)" where the draw lacks it."""
    verdict = _text(row.get("verdict"))
    if not verdict:
        return NOT_RUN
    text = f"**{verdict}**"
    if _finite(row.get("estimate")):
        unit = " dB" if "dB" in _text(row.get("statistic")) else ""
        text += f" {float(row.estimate):.2f}{unit}" + _interval(row.get("ci_low"), row.get("ci_high"), 2)
    attack = _text(row.get("attack"))
    if row.get("claim") in ("protects", "F3") and attack:
        text += f" {attack}"
    if row.get("claim") == "protects" and _finite(row.get("psnr_gap_db")):
        text += (f", gap {float(row.psnr_gap_db):.1f} dB"
                 + _interval(row.get("psnr_gap_ci_low"), row.get("psnr_gap_ci_high"), 1))
    if row.get("claim") in ("F2", "F3", "protects") and verdict != FAILS and str(row.get("converged")) == "False":
        text += ", not converged"
    return text


def _defence_name(defense: str, sigma) -> str:
    return defense + (f" {float(sigma):g}" if _finite(sigma) and float(sigma) else "")


def client_setting(batch_size, local_steps, model_state="init", unit: bool = True, local_lr=None,
                   local_batch=0) -> str:
    """"1 image", "4 images", "4 images, FedAvg 2 steps lr 0.1" (without unit: "1", "4, FedAvg 2 steps lr 0.1";
    the lr where known), "4 images, FedAvg 2 steps of 2 lr 0.1" on mini-batches; a model state other than
    init is named."""
    images, steps = int(batch_size), int(local_steps)
    text = f"{images}" + (f" image{'s' if images != 1 else ''}" if unit else "")
    if steps > 1:
        per_step = int(local_batch) if _finite(local_batch) else 0
        text += f", FedAvg {steps} steps" + (f" of {per_step}" if 0 < per_step < images else "") + (
            f" lr {float(local_lr):g}" if _finite(local_lr) else "")
    return text + ("" if model_state == "init" else f" ({model_state} model)")


def merge_draws(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Both draws' rows per claim (the second draw's columns end in "_2"); a claim of one draw only keeps
    NaN in the other's columns. Sorted by setting, claim, defence and sigma."""
    both = with_setting_columns(first).merge(with_setting_columns(second), on=KEYS, suffixes=("", "_2"), how="outer")
    return both.sort_values(KEYS, kind="stable").reset_index(drop=True)


def _draws(both: pd.DataFrame, row) -> tuple[pd.Series, pd.Series]:
    second = {c[:-2]: row[c] for c in both.columns if c.endswith("_2")}
    return row, pd.Series(second | {k: row[k] for k in KEYS})


def side_by_side(first: pd.DataFrame, second: pd.DataFrame) -> str:
    """A markdown table: one row per claim, each draw's verdict with its statistic and interval."""
    both = merge_draws(first, second)
    lines = ["| dataset | arch | images | claim | defence | draw 0 | draw 1 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, row in both.iterrows():
        zero, one = _draws(both, row)
        setting = client_setting(row.batch_size, row.local_steps, row.model_state, unit=False, local_lr=row.local_lr,
                                 local_batch=row.local_batch)
        lines.append(f"| {row.dataset} | {row.arch} | {setting} | {row.claim} | "
                     f"{_defence_name(row.defense, row.noise_scale)} | {claim_cell(zero)} | {claim_cell(one)} |")
    return "\n".join(lines)


def _short(row, words: dict[str, str]) -> tuple[str, str, str]:
    """(verdict in words, strongest attack, its median SSIM) of one draw's claim; NOT_RUN where it lacks it."""
    verdict = _text(row.get("verdict"))
    if not verdict:
        return NOT_RUN, "", ""
    number = f"{float(row.estimate):.2f}" if _finite(row.get("estimate")) else ""
    return words.get(verdict, verdict), _text(row.get("attack")), number


def answer_cell(zero, one, words: dict[str, str]) -> str:
    """Both draws in one cell: "fails (analytic 0.98 / 0.99)" where the verdict and the strongest attack
    agree, else "undecided (ig 0.48) / protects (ig 0.42)"."""
    (v0, a0, n0), (v1, a1, n1) = _short(zero, words), _short(one, words)
    if v0 == v1 != NOT_RUN and a0 == a1 and n0 and n1:
        return f"{v0} ({a0 + ' ' if a0 else ''}{n0} / {n1})"
    parts = []
    for verdict, attack, number in ((v0, a0, n0), (v1, a1, n1)):
        detail = " ".join(p for p in (attack, number) if p)
        parts.append(verdict + (f" ({detail})" if detail else ""))
    return " / ".join(parts)


def answer_table(first: pd.DataFrame, second: pd.DataFrame) -> str:
    """Per client setting: whether the undefended model leaks (F1) and whether each defence protects, on
    draw 0 / draw 1, with the strongest attack and its median SSIM. A markdown table."""
    both = merge_draws(first, second)
    both = both[both.claim.isin(["F1", "protects"])]
    defences = [d for d in both.loc[both.claim == "protects", "defense"].dropna().unique()]
    order = list(DEFENCE_COLUMNS)
    defences.sort(key=lambda d: (order.index(d) if d in order else len(order), d))
    header = ["dataset", "arch", "client update", "σ", "undefended leaks (F1)"] + [
        DEFENCE_COLUMNS.get(d, d) for d in defences]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key, group in both.groupby(SETTING, sort=False):
        setting = dict(zip(SETTING, key))
        f1 = group[group.claim == "F1"]
        leaks = answer_cell(*_draws(both, f1.iloc[0]), LEAKS_WORDS) if len(f1) else ""
        protects = group[group.claim == "protects"]
        noisy = sorted({float(s) for s in protects.noise_scale if _finite(s) and float(s)})
        one_sigma = len(noisy) <= 1
        cells = []
        for defense in defences:
            here = protects[protects.defense == defense]
            parts = []
            for _, row in here.iterrows():
                cell = answer_cell(*_draws(both, row), PROTECTS_WORDS)
                sigma = float(row.noise_scale) if _finite(row.noise_scale) else 0.0
                parts.append(cell if one_sigma or not sigma else f"σ {sigma:g}: {cell}")
            cells.append("; ".join(parts))
        sigma_text = f"{noisy[0]:g}" if len(noisy) == 1 else "per cell" if noisy else ""
        lines.append("| " + " | ".join([setting["dataset"], setting["arch"],
                                        client_setting(setting["batch_size"], setting["local_steps"],
                                                       setting["model_state"], local_lr=setting["local_lr"],
                                                       local_batch=setting["local_batch"]),
                                        sigma_text, leaks] + cells) + " |")
    return "\n".join(lines)


def counts_text(first: pd.DataFrame, second: pd.DataFrame) -> str:
    """Per draw the count of each verdict, how many claims agree, and every holds/fails contradiction."""
    lines = [f"- {SAME_RUN}"] if first.equals(second) else []
    first, second = with_setting_columns(first), with_setting_columns(second)
    for name, table in (("draw 0", first), ("draw 1", second)):
        lines.append(f"- {name}: {len(table)} claims; " + ", ".join(
            f"{v} {int((table.verdict == v).sum())}" for v in VERDICTS) + ".")
    both = first[KEYS + ["verdict"]].merge(second[KEYS + ["verdict"]], on=KEYS, suffixes=("_0", "_1"))
    same = int((both.verdict_0 == both.verdict_1).sum())
    lines.append(f"- The same verdict on both draws: {same} of the {len(both)} claims judged on both.")
    clash = contradictions(first, second)
    if len(clash):
        lines.append(f"- **Contradictions** (holds under one draw, fails under the other): {len(clash)}: " + "; ".join(
            f"{r.dataset} {r.arch} "
            f"{client_setting(r.batch_size, r.local_steps, r.model_state, local_lr=r.local_lr, local_batch=r.local_batch)} "
            f"{r.claim} "
            f"{_defence_name(r.defense, r.noise_scale)}" for r in clash.itertuples()) + ".")
    else:
        lines.append("- No claim holds under one draw and fails under the other.")
    return "\n".join(lines)


ANSWER_CAPTION = ("Each cell: draw 0 / draw 1 (two disjoint sets of test images), the verdict, then the strongest "
                  "attack and its median SSIM (one number per draw where both agree on the verdict and the attack). "
                  "A defence *protects* when every attack stays below SSIM 0.5 and 6 dB below the undefended model, "
                  "each decided from its 95% interval; σ is the noise scale of the noisy defences.")


SAME_RUN = ("**Draw 1 is not a run of its own yet**: both CSVs hold the same table, so each cell's second "
            "number repeats the first.")


def answer_block(first: pd.DataFrame, second: pd.DataFrame) -> str:
    """What goes between the README's answer markers (markers excluded)."""
    caption = ANSWER_CAPTION + (f" {SAME_RUN}" if first.equals(second) else "")
    return f"{caption}\n\n{answer_table(first, second)}"


def fill(template: str, values: dict[str, str]) -> str:
    """Replace every {{name}} of the template; an unknown name is an error, not silently left in."""
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value (known: {', '.join(sorted(values))})")
        return values[name]
    return re.sub(r"\{\{(\w+)\}\}", replace, template)


def replace_block(text: str, block: str, start: str = ANSWER_START, end: str = ANSWER_END) -> str:
    """The text with what lies between the start and end markers replaced by block (markers kept)."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {start} ... {end} not found in this order")
    return f"{text[:i + len(start)]}\n{block}\n{text[j:]}"
