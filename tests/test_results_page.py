"""docs/results.md and the README's answer table: generated from the verdict CSVs, and correct cell by cell."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ppp.results_page import ANSWER_END, ANSWER_START, answer_table, claim_cell, side_by_side
from ppp.verdicts import COLUMNS

REPO = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("results_page_tool", REPO / "tools" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_pages_equal_what_the_command_generates():
    run = subprocess.run([sys.executable, "tools/results_page.py", "--check"], cwd=REPO, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr


def _row(claim, defense, sigma, verdict, attack, estimate, low, high, **extra):
    row = dict.fromkeys(COLUMNS, np.nan)
    row.update(dataset="mnist", arch="mlp", model_state="init", batch_size=1, local_steps=1, claim=claim,
               defense=defense, noise_scale=sigma, verdict=verdict, attack=attack, estimate=estimate, ci_low=low,
               ci_high=high, statistic="median SSIM of the strongest attack", converged=True)
    row.update(extra)
    return row


def _draws():
    """Two draws of one client setting; draw 1 did not run ppp_encoder, and ppp_encoder's draw-0 interval
    and gap are missing (NaN)."""
    zero = pd.DataFrame([
        _row("F1", "none", 0.0, "holds", "ig", 1.0, 0.99, 1.0, statistic="median SSIM"),
        _row("protects", "noise", 0.1, "holds", "ig", 0.17, 0.13, 0.21, psnr_gap_db=39.3, psnr_gap_ci_low=34.7,
             psnr_gap_ci_high=41.3),
        _row("protects", "ppp", 0.1, "fails", "analytic", 0.98, 0.97, 0.99, psnr_gap_db=18.6,
             psnr_gap_ci_low=14.2, psnr_gap_ci_high=22.4),
        _row("protects", "ppp_encoder", 0.1, "undecided", "latent", 0.40, np.nan, np.nan),
        _row("protects", "precode", 0.0, "fails", "latent", 1.0, 1.0, 1.0, psnr_gap_db=-2.3,
             psnr_gap_ci_low=-9.2, psnr_gap_ci_high=2.4),
    ], columns=COLUMNS)
    one = zero[zero.defense != "ppp_encoder"].copy()
    one.loc[one.defense == "ppp", ["estimate", "ci_low", "ci_high"]] = [0.97, 0.95, 0.99]
    one.loc[one.defense == "noise", ["verdict", "estimate", "converged"]] = ["undecided", 0.45, False]
    return zero, one


def _columns(table: str, first_cell: str) -> dict[str, str]:
    """The row of a markdown table whose first cell is first_cell, keyed by the header."""
    lines = table.splitlines()
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    rows = [r for r in split[2:] if r[0] == first_cell]
    assert len(rows) == 1, table
    return dict(zip(split[0], rows[0]))


def test_answer_table_puts_each_draw_in_its_defence_s_column():
    zero, one = _draws()
    row = _columns(answer_table(zero, one), "mnist")
    assert row["undefended leaks (F1)"] == "leaks (ig 1.00 / 1.00)"
    assert row["paper's PPP"] == "fails (analytic 0.98 / 0.97)"
    assert row["PRECODE"] == "fails (latent 1.00 / 1.00)"
    assert row["full noise"] == "protects (ig 0.17) / undecided (ig 0.45)"
    assert row["ppp_encoder"] == "undecided (latent 0.40) / (not run)"
    assert row["σ"] == "0.1"
    assert row["client update"] == "1 image"
    assert list(row)[5:] == ["PRECODE", "paper's PPP", "ppp_encoder", "full noise"]


def test_answer_table_names_the_sigma_of_each_cell_when_a_setting_has_several():
    zero, one = _draws()
    extra = zero[zero.defense == "ppp"].assign(noise_scale=1.0, verdict="holds", estimate=0.1)
    zero = pd.concat([zero, extra], ignore_index=True)
    row = _columns(answer_table(zero, one), "mnist")
    assert row["σ"] == "per cell"
    assert row["paper's PPP"] == "σ 0.1: fails (analytic 0.98 / 0.97); σ 1: protects (analytic 0.10) / (not run)"


def test_full_table_shows_intervals_gaps_and_missing_claims():
    zero, one = _draws()
    table = side_by_side(zero, one)
    rows = [line for line in table.splitlines() if "| protects | ppp 0.1 |" in line]
    assert rows == ["| mnist | mlp | 1 | protects | ppp 0.1 | **fails** 0.98 [0.97, 0.99] analytic, gap 18.6 dB "
                    "[14.2, 22.4] | **fails** 0.97 [0.95, 0.99] analytic, gap 18.6 dB [14.2, 22.4] |"]
    encoder = [line for line in table.splitlines() if "ppp_encoder" in line]
    assert encoder == ["| mnist | mlp | 1 | protects | ppp_encoder 0.1 | **undecided** 0.40 latent | (not run) |"]
    assert "nan" not in table
    noise = [line for line in table.splitlines() if "| noise 0.1 |" in line][0]
    assert noise.endswith("**undecided** 0.45 [0.13, 0.21] ig, gap 39.3 dB [34.7, 41.3], not converged |")


def test_fedavg_at_two_local_learning_rates_are_two_rows_named_by_their_lr():
    zero, one = _draws()
    fedavg = [d.assign(batch_size=4, local_steps=2, local_lr=lr) for d in (zero, one) for lr in (0.1, 0.01)]
    zero, one = pd.concat([zero, *fedavg[:2]], ignore_index=True), pd.concat([one, *fedavg[2:]], ignore_index=True)
    settings = [line.split("|")[3].strip() for line in answer_table(zero, one).splitlines()[2:]]
    assert settings == ["1 image", "4 images, FedAvg 2 steps lr 0.01", "4 images, FedAvg 2 steps lr 0.1"]
    assert "| 4, FedAvg 2 steps lr 0.01 | F1 |" in side_by_side(zero, one)


def test_verdict_csvs_from_before_the_local_lr_column_still_read():
    """A CSV written before local_lr joined the key (as docs/results/ held until 7438f31): FedSGD reads as 0,
    FedAvg as the 0.1 those runs used."""
    current = pd.read_csv(REPO / "docs" / "results" / "verdicts-draw0.csv")
    old = current[current.local_lr.isin([0.0, 0.1])].drop(columns="local_lr")
    assert (old.local_steps > 1).any()
    table = answer_table(old, old)
    assert "| mnist | lenet | 4 images, FedAvg 2 steps lr 0.1 |" in table
    assert "| mnist | lenet | 4 images |" in table and "lr 0 " not in table


def test_claim_cell_of_a_missing_claim_and_of_a_dB_statistic():
    assert claim_cell(pd.Series({"verdict": np.nan})) == "(not run)"
    f2 = pd.Series({"claim": "F2", "verdict": "holds", "statistic": "median PSNR, targeted minus IG (dB)",
                    "estimate": 8.123, "ci_low": 7.13, "ci_high": 8.85, "converged": True})
    assert claim_cell(f2) == "**holds** 8.12 dB [7.13, 8.85]"


def test_command_rewrites_only_the_answer_block_and_check_finds_drift(tmp_path, capsys):
    zero, one = _draws()
    zero.to_csv(tmp_path / "d0.csv", index=False)
    one.to_csv(tmp_path / "d1.csv", index=False)
    (tmp_path / "t.md").write_text("# R\n\nfrom {{source}}\n\n{{answer_table}}\n\n{{counts}}\n\n{{verdict_table}}\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n{ANSWER_START}\nold table\n{ANSWER_END}\n\nbottom\n")
    args = ["--draw0", str(tmp_path / "d0.csv"), "--draw1", str(tmp_path / "d1.csv"), "--template",
            str(tmp_path / "t.md"), "--out", str(tmp_path / "results.md"), "--readme", str(readme)]
    tool = _tool()
    assert tool.main(args + ["--check"]) == 1  # results.md does not exist yet
    assert tool.main(args) == 0
    text = readme.read_text()
    assert text.startswith(f"# top\n\n{ANSWER_START}\n") and text.endswith(f"{ANSWER_END}\n\nbottom\n")
    assert "old table" not in text and "fails (analytic 0.98 / 0.97)" in text
    results = (tmp_path / "results.md").read_text()
    assert "fails (analytic 0.98 / 0.97)" in results and "**fails** 0.98 [0.97, 0.99] analytic" in results
    assert "draw 0: 5 claims; holds 2, fails 2, undecided 1." in results
    assert "The same verdict on both draws: 3 of the 4 claims judged on both." in results
    assert tool.main(args + ["--check"]) == 0
    capsys.readouterr()

    one.loc[one.defense == "ppp", "estimate"] = 0.5  # a new draw-1 CSV: both pages are stale
    one.to_csv(tmp_path / "d1.csv", index=False)
    assert tool.main(args + ["--check"]) == 1
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "results.md" in message and "README.md" in message

    readme.write_text("# a README without markers\n")
    assert tool.main(args) == 2


def test_a_placeholder_without_a_value_is_an_error():
    from ppp.results_page import fill

    with pytest.raises(KeyError, match="nope"):
        fill("{{nope}}", {"answer_table": ""})


def test_verdict_stability_prints_the_same_table(tmp_path, capsys):
    zero, one = _draws()
    zero.to_csv(tmp_path / "d0.csv", index=False)
    one.to_csv(tmp_path / "d1.csv", index=False)
    spec = importlib.util.spec_from_file_location("verdict_stability", REPO / "benchmarks" / "verdict_stability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = [str(tmp_path / "d0.csv"), str(tmp_path / "d1.csv")]
    assert module.main(files + ["--markdown"]) == 0  # holds against undecided is no contradiction
    out = capsys.readouterr().out
    assert side_by_side(pd.read_csv(files[0]), pd.read_csv(files[1])) in out

    one.loc[one.defense == "noise", "verdict"] = "fails"
    one.to_csv(files[1], index=False)
    assert module.main(files) == 1
