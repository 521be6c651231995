"""The three-valued verdicts: intervals decide, updates are the resampling unit, unconverged attacks and
models still learning leave claims undecided."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ppp.report import RECONSTRUCTION_COLUMNS
from ppp.verdicts import (FAILS, HOLDS, SETTING, UNDECIDED, Thresholds, all_of, any_of, compare, contradictions,
                          judge, plateaued, with_setting_columns)


def _rows(defense, sigma, attack, ssim, psnr, batch_size=1, ssim_half=None):
    """One row per image; `ssim` and `psnr` are per-image lists (or one value for all 16 images)."""
    ssim = np.broadcast_to(np.asarray(ssim, dtype=float), (16,)) if np.ndim(ssim) == 0 else np.asarray(ssim, float)
    psnr = np.broadcast_to(np.asarray(psnr, dtype=float), ssim.shape)
    half = ssim if ssim_half is None else np.broadcast_to(np.asarray(ssim_half, dtype=float), ssim.shape)
    return [dict(dataset="mnist", arch="mlp", batch_size=batch_size, local_steps=1, defense=defense, noise_scale=sigma,
                 attack=attack, model_state="init", victim=v, update_id=v // batch_size, label=v % 10,
                 label_accuracy=1.0, mse=0.0, psnr=float(psnr[v]), ssim=float(ssim[v]), lpips=np.nan,
                 ssim_half=float(half[v])) for v in range(len(ssim))]


def _table(*cells, **kwargs):
    return judge(pd.DataFrame([r for c in cells for r in c], columns=RECONSTRUCTION_COLUMNS), **kwargs)


def _claim(table, claim, defense=None, sigma=None):
    rows = table[table.claim == claim]
    if defense is not None:
        rows = rows[(rows.defense == defense) & np.isclose(rows.noise_scale, sigma or 0.0)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_kleene_logic_and_comparisons():
    assert all_of([HOLDS, HOLDS]) == HOLDS and all_of([HOLDS, UNDECIDED]) == UNDECIDED
    assert all_of([UNDECIDED, FAILS]) == FAILS and all_of([]) == UNDECIDED
    assert any_of([FAILS, HOLDS]) == HOLDS and any_of([FAILS, UNDECIDED]) == UNDECIDED and any_of([FAILS]) == FAILS
    assert compare(0.6, 0.9, 0.5, at_least=True) == HOLDS and compare(0.4, 0.9, 0.5, at_least=True) == UNDECIDED
    assert compare(0.1, 0.4, 0.5, at_least=True) == FAILS and compare(0.1, 0.4, 0.5, at_least=False) == HOLDS
    assert compare(np.nan, 0.4, 0.5, at_least=False) == UNDECIDED


def test_an_interval_across_the_threshold_is_undecided():
    rng = np.random.default_rng(1)
    clear = _table(_rows("none", 0.0, "ig", rng.uniform(0.8, 0.95, 16), 30.0))
    assert _claim(clear, "F1").verdict == HOLDS
    low = _table(_rows("none", 0.0, "ig", rng.uniform(0.05, 0.2, 16), 12.0))
    assert _claim(low, "F1").verdict == FAILS
    split = _table(_rows("none", 0.0, "ig", [0.1] * 7 + [0.9] * 9, 20.0))  # median 0.9, half the images fail
    row = _claim(split, "F1")
    assert row.verdict == UNDECIDED and row.estimate == pytest.approx(0.9) and row.ci_low < 0.5 <= row.ci_high


def test_images_that_share_an_update_are_resampled_together():
    """Three updates reconstructed, one not: over updates (4 units) the median is not decided; the same
    16 values as 16 one-image updates give a narrower interval."""
    values = [0.9] * 12 + [0.1] * 4
    by_update = _claim(_table(_rows("none", 0.0, "ig", values, 25.0, batch_size=4)), "F1")
    by_image = _claim(_table(_rows("none", 0.0, "ig", values, 25.0, batch_size=1)), "F1")
    assert by_update.units == 4 and by_image.units == 16 and by_update.images == by_image.images == 16
    assert by_update.ci_low < by_image.ci_low
    assert by_update.verdict == UNDECIDED


def _defended(ssim_half=None, targeted=0.1):
    return (_rows("none", 0.0, "ig", np.linspace(0.85, 0.95, 16), 30.0),
            _rows("precode", 0.0, "ig", np.linspace(0.02, 0.08, 16), 9.0),
            _rows("precode", 0.0, "ig_targeted", np.linspace(0.75, 0.9, 16), 26.0),
            _rows("ppp", 0.1, "ig", np.linspace(0.02, 0.08, 16), 9.0),
            _rows("ppp", 0.1, "ig_targeted", np.linspace(targeted - 0.05, targeted + 0.05, 16), 12.0,
                  ssim_half=ssim_half))


def test_a_defence_protects_only_against_an_attack_that_has_converged():
    converged = _table(*_defended())
    assert _claim(converged, "protects", "ppp", 0.1).verdict == HOLDS
    assert _claim(converged, "protects", "precode").verdict == FAILS
    # The targeted attack was still gaining: 0.15 of median SSIM over the second half of its run.
    rising = _table(*_defended(ssim_half=np.linspace(-0.1, 0.0, 16)))
    row = _claim(rising, "protects", "ppp", 0.1)
    assert row.verdict == UNDECIDED and not row.converged and row.ssim_gain_last_half == pytest.approx(0.15, abs=0.01)
    assert _claim(rising, "F3", "ppp", 0.1).verdict == UNDECIDED


def test_an_attack_that_fails_while_still_improving_decides_nothing():
    """IG below the threshold on the undefended model: F1 fails only once the attack has converged (the deep
    nets at a CPU budget, where a longer run may yet reconstruct)."""
    low = np.linspace(0.25, 0.35, 16)
    assert _claim(_table(_rows("none", 0.0, "ig", low, 15.0)), "F1").verdict == FAILS
    rising = _claim(_table(_rows("none", 0.0, "ig", low, 15.0, ssim_half=low - 0.2)), "F1")
    assert rising.verdict == UNDECIDED and not rising.converged
    # A working attack needs no convergence check: more iterations only reconstruct better.
    high = np.linspace(0.8, 0.9, 16)
    assert _claim(_table(_rows("none", 0.0, "ig", high, 25.0, ssim_half=high - 0.3)), "F1").verdict == HOLDS


def test_a_targeted_attack_still_improving_does_not_fail_f2_s_margin():
    """F2's "the targeted attack beats IG on PRECODE by margin_db" fails only once the targeted attack has
    converged (ResNet-18 at 400 iterations: 2.3 dB ahead and still gaining 0.13 of SSIM)."""
    def cells(targeted_half):
        return (_rows("none", 0.0, "ig", np.linspace(0.85, 0.95, 16), 30.0),
                _rows("precode", 0.0, "ig", np.linspace(0.02, 0.08, 16), 9.0),
                _rows("precode", 0.0, "ig_targeted", np.linspace(0.25, 0.35, 16), 11.0, ssim_half=targeted_half))
    stopped = _claim(_table(*cells(np.linspace(0.25, 0.35, 16))), "F2", "precode")
    assert stopped.verdict == FAILS and "beats IG by 6 dB: fails" in stopped.detail
    rising = _claim(_table(*cells(np.linspace(0.1, 0.2, 16))), "F2", "precode")
    assert rising.verdict == UNDECIDED and "beats IG by 6 dB: undecided" in rising.detail


def test_the_gap_to_the_undefended_model_is_a_paired_interval():
    """A defended cell 6 dB under the undefended one on every image: the paired gap is exactly 6 dB
    whatever the images' own spread, so the 6 dB rule holds; 5 dB under fails."""
    rng = np.random.default_rng(2)
    spread = rng.uniform(15, 35, 16)
    base = _rows("none", 0.0, "ig", np.full(16, 0.9), spread)
    for under, verdict in ((6.5, HOLDS), (5.0, FAILS)):
        table = _table(base, _rows("noise", 0.1, "ig", np.full(16, 0.2), spread - under))
        row = _claim(table, "protects", "noise", 0.1)
        assert row.psnr_gap_db == pytest.approx(under) and row.psnr_gap_ci_high - row.psnr_gap_ci_low < 1e-9
        assert row.verdict == verdict


def test_accuracy_is_judged_only_on_a_model_that_has_plateaued():
    n = 1000
    none, ppp = np.ones(n), np.ones(n)
    ppp[:10] = 0  # one point lost
    correct = {("mnist", "mlp", "none", 0.0): none, ("mnist", "mlp", "ppp", 0.1): ppp}
    flat = _table(*_defended(), correct=correct, curves={("mnist", "mlp"): [0.5, 0.8, 0.85, 0.852, 0.853]})
    assert _claim(flat, "F4").verdict == HOLDS and _claim(flat, "F4").plateaued
    rising = _table(*_defended(), correct=correct, curves={("mnist", "mlp"): [0.5, 0.6, 0.7]})
    row = _claim(rising, "F4")
    assert row.verdict == UNDECIDED and row.indicative == HOLDS and not row.plateaued
    assert plateaued([0.5, 0.8, 0.85, 0.852, 0.853], Thresholds())
    assert not plateaued([0.5, 0.6, 0.7], Thresholds()) and not plateaued([0.9, 0.9], Thresholds())


def test_verdicts_are_seeded_and_contradictions_are_found():
    first, again = _table(*_defended()), _table(*_defended())
    pd.testing.assert_frame_equal(first, again)
    broken = _table(*_defended(targeted=0.9))
    clash = contradictions(first, broken)
    assert set(zip(clash.claim, clash.defense)) == {("protects", "ppp"), ("F3", "ppp")}
    assert contradictions(first, again).empty


def test_draws_read_back_from_csv_key_alike_when_one_has_no_noisy_cell(tmp_path):
    """An F1-only draw's noise_scale column is all zeros and reads back as integers: it must still meet the
    other draw's float column row for row, without pandas' int/float merge warning."""
    import warnings

    first = _table(*_defended())
    f1_only = first[first.defense == "none"].assign(verdict=FAILS).astype({"noise_scale": int})  # as aggregate wrote it
    first.to_csv(tmp_path / "first.csv", index=False)
    f1_only.to_csv(tmp_path / "second.csv", index=False)
    read_first, read_second = pd.read_csv(tmp_path / "first.csv"), pd.read_csv(tmp_path / "second.csv")
    assert read_second.noise_scale.dtype.kind == "i"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clash = contradictions(read_first, read_second)
    assert set(clash.claim) == {"F1"} and len(clash) == len(f1_only)


def test_too_few_updates_decide_nothing():
    """Two 4-image updates: no interval, every verdict undecided, however clear the medians look."""
    table = _table(_rows("none", 0.0, "ig", np.full(8, 0.95), 40.0, batch_size=4),
                   _rows("noise", 1.0, "ig", np.full(8, 0.01), 5.0, batch_size=4))
    assert set(table.verdict) == {UNDECIDED} and table.ci_low.isna().all()
    assert _claim(table, "F1").estimate == pytest.approx(0.95)


def test_a_setting_without_ig_is_judged_against_its_strongest_attack_on_the_undefended_model():
    """LeNet's batches run only the head attack: F1 and every defence's gap use it, not a missing IG."""
    table = _table(_rows("none", 0.0, "head", np.linspace(0.85, 0.95, 16), 30.0, batch_size=4),
                   _rows("precode", 0.0, "head", np.linspace(0.85, 0.95, 16), 30.0, batch_size=4),
                   _rows("ppp_encoder", 0.1, "head", np.linspace(0.02, 0.08, 16), 9.0, batch_size=4))
    f1 = _claim(table, "F1")
    assert f1.verdict == HOLDS and f1.attack == "head"
    row = _claim(table, "protects", "ppp_encoder", 0.1)
    assert row.verdict == HOLDS and row.psnr_gap_db == pytest.approx(21.0)
    assert _claim(table, "protects", "precode").verdict == FAILS


def test_where_no_attack_works_on_the_undefended_model_no_defence_is_judged():
    """FedAvg's LeNet cells: the head attack fails even undefended, so a defence's low SSIM proves nothing."""
    table = _table(_rows("none", 0.0, "head", np.linspace(0.02, 0.05, 16), 12.0, batch_size=4),
                   _rows("precode", 0.0, "head", np.linspace(0.02, 0.05, 16), 12.0, batch_size=4),
                   _rows("ppp", 0.1, "head", np.linspace(0.02, 0.05, 16), 12.0, batch_size=4))
    assert _claim(table, "F1").verdict == FAILS
    assert _claim(table, "protects", "ppp", 0.1).verdict == UNDECIDED
    assert _claim(table, "F3", "ppp", 0.1).verdict == UNDECIDED


def _fedavg(rows, local_lr, local_steps=2):
    return [dict(r, local_steps=local_steps, local_lr=local_lr) for r in rows]


def test_fedavg_at_two_local_learning_rates_are_two_settings_with_their_own_verdicts():
    """One architecture's FedAvg at lr 0.1 and 0.01 (same images, same steps): reconstructed at 0.01, not
    at 0.1. Keyed without local_lr the two would merge into one setting of 32 images and one F1."""
    at_01 = _fedavg(_rows("none", 0.0, "head", np.linspace(0.02, 0.05, 16), 12.0, batch_size=4), 0.1)
    at_001 = _fedavg(_rows("none", 0.0, "head", np.linspace(0.85, 0.95, 16), 30.0, batch_size=4), 0.01)
    table = _table(at_01, at_001)
    assert "local_lr" in SETTING
    f1 = table[table.claim == "F1"].set_index("local_lr")
    assert sorted(f1.index) == [0.01, 0.1]
    assert f1.loc[0.1].verdict == FAILS and f1.loc[0.01].verdict == HOLDS
    assert (f1.images == 16).all() and (f1.local_steps == 2).all()
    # FedSGD's rows key lr 0.0 (the column may be missing or empty in older tables); FedAvg's must name it.
    fedsgd = _table(_rows("none", 0.0, "ig", np.linspace(0.85, 0.95, 16), 30.0))
    assert set(fedsgd.local_lr) == {0.0}
    with pytest.raises(ValueError, match="FedAvg rows without a local_lr"):
        _table(_fedavg(_rows("none", 0.0, "head", 0.9, 30.0, batch_size=4), np.nan))


def test_tables_from_before_the_local_lr_column_read_as_fedsgd_0_and_fedavg_0_1():
    old = pd.DataFrame({"dataset": ["mnist"] * 2, "arch": ["lenet"] * 2, "model_state": ["init"] * 2,
                        "batch_size": [4, 4], "local_steps": [1, 2], "claim": ["F1", "F1"]})
    filled = with_setting_columns(old)
    assert list(filled.columns[:7]) == SETTING and list(filled.local_lr) == [0.0, 0.1]
    assert list(filled.local_batch) == [0, 0]  # full batch: the only kind before local_batch was a column
    assert with_setting_columns(filled) is filled  # nothing to fill


def test_fedavg_on_mini_batches_is_its_own_setting_beside_full_batch():
    """Full batch and 2 mini-batches of 2 at the same images, steps and lr: two settings, each judged on its
    own images (one leaks, the other does not), and full batch keeps the bootstrap draws it had before
    local_batch was a column."""
    full = _fedavg(_rows("none", 0.0, "ig", np.linspace(0.85, 0.95, 16), 30.0, batch_size=4), 0.1)
    mini = [dict(r, local_batch=2) for r in _fedavg(_rows("none", 0.0, "ig", np.linspace(0.02, 0.05, 16), 10.0,
                                                          batch_size=4), 0.1)]
    table = _table(full, mini)
    f1 = table[table.claim == "F1"].set_index("local_batch").verdict
    assert f1.to_dict() == {0: HOLDS, 2: FAILS}
    before = judge(pd.DataFrame(full, columns=[c for c in RECONSTRUCTION_COLUMNS if c != "local_batch"]))
    columns = ["claim", "defense", "noise_scale", "verdict", "estimate", "ci_low", "ci_high"]
    got = table[table.local_batch == 0][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, before[columns].reset_index(drop=True))


def test_a_partial_run_is_judged_from_its_metrics_files_with_the_preset_s_thresholds(tmp_path, capsys):
    """tools/judge_cells.py: the verdicts of the evaluated cells a run has so far, as aggregate judges them,
    with the preset's report thresholds (a stricter success SSIM turns F1 from holds to fails)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo / "tools"))
    from judge_cells import main

    rows = pd.DataFrame([r for c in _defended() for r in c], columns=RECONSTRUCTION_COLUMNS)
    # Two files, as two evaluate jobs write them (the cells split between them).
    rows[rows.defense != "ppp"].to_csv(tmp_path / "a.csv", index=False)
    rows[rows.defense == "ppp"].to_csv(tmp_path / "b.csv", index=False)
    files = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert main(files + ["--out", str(tmp_path / "verdicts.csv")]) == 0
    written = pd.read_csv(tmp_path / "verdicts.csv")
    expected = judge(rows)
    assert list(written.claim) == list(expected.claim) and list(written.verdict) == list(expected.verdict)
    assert _claim(written, "protects", "ppp", 0.1).verdict == HOLDS
    assert _claim(written, "F1").verdict == HOLDS

    strict = tmp_path / "strict.yaml"
    strict.write_text("report: {success_ssim: 0.97}\n")
    main(files + ["--config", str(strict), "--out", str(tmp_path / "strict.csv")])
    assert _claim(pd.read_csv(tmp_path / "strict.csv"), "F1").verdict == FAILS
    capsys.readouterr()

    missing = subprocess.run([sys.executable, str(repo / "tools" / "judge_cells.py"), str(tmp_path / "none.csv")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "none.csv" in missing.stderr


def test_a_preset_s_thresholds_reach_the_verdicts_and_its_figure_options_do_not():
    import yaml
    from ppp.config import SCHEMA_PATH, load_preset

    report_keys = set(yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["report"]["properties"])
    figure_options = {"grid_images", "lpips", "lpips_weights"}
    # A threshold the schema accepts but Thresholds lacks would be validated, then silently ignored.
    assert report_keys - figure_options <= {f.name for f in dataclasses.fields(Thresholds)}
    section = dict(load_preset([])["report"], success_ssim=0.6, margin_db=3.0, min_units=8)
    thresholds = Thresholds.from_report(section)
    assert (thresholds.success_ssim, thresholds.margin_db, thresholds.min_units) == (0.6, 3.0, 8)
    assert thresholds.level == section["level"] and thresholds.resamples == Thresholds().resamples
