"""Faults a long run meets, produced for real: damaged input files (cut short, empty, another format),
a full disk or a file size limit at the write, and running out of memory in an attack.

Each gives one line naming the file, path or pass and the cause, and loses nothing finished. The
end-to-end half (a job failing on a full disk, then `make run` resuming to a clean run's tables) is
`test_a_full_disk_fails_its_job_with_one_line_and_the_next_run_gives_a_clean_runs_tables` in
tests/test_workflow.py, beside the clean run it compares with; MLflow down is
tests/test_tracking_live.py.
"""

import errno
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ppp.attacks.engine import AttackOutOfMemory, GradientMatching, GradientMatchingProblem, optimise
from ppp.attacks.per_layer import PerLayerObjective
from ppp.config import ConfigError, check_victim_files
from ppp.data import load_split, load_victims
from ppp.gradients import select_parameters
from ppp.io import ArtifactError, ArtifactWriteError, load_tensors, read_json, save_tensors, write_json, write_text
from ppp.tracking import _read_records

REPO = Path(__file__).resolve().parent.parent
VICTIMS = REPO / "data" / "victims" / "mnist_128_cvb.npz"


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "other": b"\xff\xfeGIF89a not this format"}[how])


def _one_line(err: BaseException, path: Path) -> str:
    text = str(err)
    assert "\n" not in text and str(path) in text, text
    return text


# ---- damaged inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("how,cause", [("truncated", "truncated"), ("empty", "empty file"), ("other", "not an .npz")])
def test_a_damaged_victims_npz_is_named_with_the_cause(tmp_path, how, cause):
    path = tmp_path / "victims.npz"
    shutil.copy(VICTIMS, path)
    _damage(path, how)
    with pytest.raises(ArtifactError) as caught:
        load_victims(path, "mnist", 32)
    assert cause in _one_line(caught.value, path)
    # At parse time: the config check names the key and the file (no BadZipFile traceback).
    config = {"datasets": {"mnist": {"victims": str(path)}}, "archs": ["mlp"], "attack": {"defaults": {"victims": 2}}}
    with pytest.raises(ConfigError) as caught:
        check_victim_files(config)
    assert str(caught.value).startswith("config key 'datasets.mnist.victims': ") and cause in _one_line(caught.value, path)


@pytest.mark.parametrize("how", ["truncated", "empty", "other"])
def test_a_damaged_bundled_dataset_and_a_damaged_image_are_named(tmp_path, how):
    bundled = tmp_path / "mine.npz"
    np.savez(bundled, train_images=np.zeros((4, 1, 8, 8), np.uint8), train_labels=np.arange(4),
             test_images=np.zeros((2, 1, 8, 8), np.uint8), test_labels=np.arange(2))
    _damage(bundled, how)
    with pytest.raises(ArtifactError) as caught:
        load_split("mine", {"source": "bundled", "path": str(bundled), "channels": 1}, train=True)
    _one_line(caught.value, bundled)

    for split in ("train", "test"):
        (tmp_path / "scans" / split / "0").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8), "L").save(tmp_path / "scans" / split / "0" / f"{i}.png")
    image = tmp_path / "scans" / "train" / "0" / "1.png"
    _damage(image, how)
    with pytest.raises(ArtifactError) as caught:
        load_split("scans", {"source": "imagefolder", "root": str(tmp_path / "scans"), "channels": 1}, train=True)
    assert "truncated, empty or not an image" in _one_line(caught.value, image)


@pytest.mark.parametrize("how,cause", [("truncated", "truncated"), ("empty", "empty file"), ("other", "not a")])
def test_damaged_safetensors_and_json_artifacts_are_named(tmp_path, how, cause):
    tensors = tmp_path / "victims.safetensors"
    save_tensors(tensors, {"images": torch.zeros(4, 1, 32, 32), "labels": torch.arange(4)})
    _damage(tensors, how)
    with pytest.raises(ArtifactError) as caught:
        load_tensors(tensors, required=("images", "labels"))
    assert cause in _one_line(caught.value, tensors)
    meta = tmp_path / "meta.json"
    write_json(meta, {"channels": 1, "num_classes": 10, "mean": [0.1], "std": [0.3]})
    _damage(meta, how)
    with pytest.raises(ArtifactError) as caught:
        read_json(meta)
    assert cause.replace("not a", "truncated or not") in _one_line(caught.value, meta)


def test_a_damaged_run_record_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    good = {"record_id": "a", "run_name": "train/mnist", "start_ms": 1}
    for name in ("a", "cut", "empty", "binary", "list"):
        write_json(tmp_path / f"{name}.json", good if name == "a" else [1])
    _damage(tmp_path / "cut.json", "truncated")
    _damage(tmp_path / "empty.json", "empty")
    _damage(tmp_path / "binary.json", "other")
    with caplog.at_level(logging.WARNING, logger="ppp.tracking"):
        assert _read_records(tmp_path) == [good]
    warned = sorted(r.getMessage().split()[4] for r in caplog.records)
    assert warned == sorted(str(tmp_path / f"{n}.json") for n in ("binary", "cut", "empty", "list"))


# ---- a full disk, a quota, a file size limit ----------------------------------------------------------

def _assert_failed_write_left_nothing(err: ArtifactWriteError, target: Path, cause: str, before: bytes | None):
    text = _one_line(err, target)
    assert text.startswith(f"{target}: could not be written: {cause}"), text
    assert (target.read_bytes() if target.exists() else None) == before  # the old file is untouched
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".part")]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 64 KiB filesystem (tmpfs): needs root (CI runs as root); skipped otherwise."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_write_with_one_line_and_leaves_no_half_written_file(small_tmpfs):
    model = small_tmpfs / "model.safetensors"
    save_tensors(model, {"w": torch.ones(1000)})  # 4 KB: fits
    before = model.read_bytes()
    with pytest.raises(ArtifactWriteError) as caught:
        save_tensors(model, {"w": torch.ones(40_000)})  # 160 KB: the disk fills half-way through the write
    assert caught.value.__cause__ is not None
    _assert_failed_write_left_nothing(caught.value, model, "No space left on device", before)
    with pytest.raises(ArtifactWriteError) as caught:
        write_json(small_tmpfs / "metrics.json", {"ssim": list(range(40_000))})
    _assert_failed_write_left_nothing(caught.value, small_tmpfs / "metrics.json", "No space left on device", None)
    # Space freed (the big write's temporary file was removed): the same write now succeeds.
    model.unlink()
    save_tensors(model, {"w": torch.ones(4000)})
    assert load_tensors(model)["w"].shape == (4000,)


FSIZE_WRITER = """
import resource, sys
from pathlib import Path
import torch
from ppp.io import ArtifactWriteError, save_tensors, write_json, write_text
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))  # a file size limit (ulimit -f 64)
out = Path(sys.argv[1])
for write in (lambda: save_tensors(out / "a.safetensors", {"w": torch.ones(100_000)}),
              lambda: write_json(out / "b.json", list(range(100_000))),
              lambda: write_text(out / "c.txt", "x" * 200_000)):
    try:
        write()
    except ArtifactWriteError as err:
        print(err)
"""


def test_a_file_size_limit_fails_each_writer_with_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE (a quota-like limit that any user can set): the kernel fails the write with EFBIG,
    in safetensors' Rust writer and in Python's, in a real process."""
    done = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(tmp_path / n) for n in ("a.safetensors", "b.json", "c.txt")]
    assert all(": could not be written: File too large" in line for line in lines), lines
    assert list(tmp_path.iterdir()) == []


def test_an_enospc_raised_by_the_write_call_is_named(tmp_path, monkeypatch):
    """ENOSPC at Python's write call itself (a quota reached mid-file)."""
    import pathlib

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(ArtifactWriteError) as caught:
        write_text(tmp_path / "summary.csv", "a,b\n")
    _assert_failed_write_left_nothing(caught.value, tmp_path / "summary.csv", "No space left on device (errno 28)",
                                      None)


# ---- out of memory in an attack -----------------------------------------------------------------------

def _view(mnist_victims, n=3):
    from ppp.attacks import ServerView
    from ppp.gradients import shared_gradient
    from ppp.models import build_model
    from ppp.seeding import seeded

    images, labels = mnist_victims[0][:n], mnist_victims[1][:n]
    with seeded(0):
        model = build_model("mlp", (1, 32, 32), 10, (0.1307,), (0.3081,), None, {"width": 16})
    per = [shared_gradient(model, images[i:i + 1], labels[i:i + 1]) for i in range(n)]
    return ServerView(model, {k: torch.stack([g[k] for g in per]) for k in per[0]}, labels.clone()), labels


def _problem(view, **overrides):
    return GradientMatchingProblem(**{**dict(names=select_parameters(view.model, "all"), iterations=6, lr=0.1,
                                             tv_weight=1e-4, restarts=2, init="randn", signed=True, boxed=True,
                                             lr_decay=True), **overrides})


def _fits_only(monkeypatch, target, name, most_rows, error):
    """The engine's pass raises torch's out-of-memory error when given more than `most_rows` rows."""
    original = getattr(target, name)
    calls = []

    def pass_(self, x, rows, *args, **kwargs):
        chunk = args[0] if name == "vectorized" else None
        size = min(chunk or len(rows), len(rows))
        calls.append(size)
        if size > most_rows:
            raise error
        return original(self, x, rows, *args, **kwargs)

    monkeypatch.setattr(target, name, pass_)
    return calls


@pytest.mark.parametrize("engine,target,name,error", [
    ("per_layer", PerLayerObjective, "_evaluate", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")),
    ("vmap", "RowObjective", "vectorized", torch.cuda.OutOfMemoryError("CUDA out of memory")),
    ("per_layer", PerLayerObjective, "_evaluate",
     RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 1 GiB")),
])
def test_an_attack_out_of_memory_retries_with_fewer_rows_and_gives_the_fitted_result(
        mnist_victims, monkeypatch, caplog, engine, target, name, error):
    from ppp.attacks import engine as engine_module

    view, labels = _view(mnist_victims)
    fitted = optimise(view, labels, _problem(view, engine=engine), seed=1)
    target = getattr(engine_module, target) if isinstance(target, str) else target
    calls = _fits_only(monkeypatch, target, name, 3, error)
    with caplog.at_level(logging.WARNING, logger="ppp.attacks.engine"):
        retried = optimise(view, labels, _problem(view, engine=engine), seed=1)
    assert calls[0] == 6 and retried.oom_retries == 1 and retried.chunk_rows == 3 and fitted.oom_retries == 0
    assert [r.getMessage() for r in caplog.records] == [
        "attack: out of memory with 6 rows per pass; retrying with 3"]
    torch.testing.assert_close(retried.images, fitted.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(retried.gradient_loss, fitted.gradient_loss)


@pytest.mark.parametrize("images_per_update", [1, 2])
def test_the_analytic_attack_out_of_memory_retries_with_fewer_rows_and_gives_the_fitted_result(
        mnist_victims, monkeypatch, caplog, images_per_update):
    """The analytic attack's objectives (feature matching at one image, span matching at several) halve
    their rows per pass on running out of memory, as gradient matching does."""
    from ppp.attacks import ServerView, build_attack
    from ppp.attacks.analytic import FeatureMatching, SpanMatching
    from ppp.gradients import shared_gradient
    from ppp.models import PrecodeSpec, build_model
    from ppp.seeding import seeded

    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    with seeded(0):
        model = build_model("mlp", (1, 32, 32), 10, (0.1307,), (0.3081,), PrecodeSpec(bottleneck_size=16),
                            {"width": 32})
    per = []
    for start in range(0, 4, images_per_update):
        with seeded(start):
            per.append(shared_gradient(model, images[start:start + images_per_update],
                                       labels[start:start + images_per_update]))
    view = ServerView(model, {k: torch.stack([g[k] for g in per]) for k in per[0]},
                      labels.clone(), images_per_update=images_per_update)
    attack = build_attack("analytic", iterations=6, tv_weight=1e-2, restarts=2)
    fitted = attack(view, seed=1)
    target = FeatureMatching if images_per_update == 1 else SpanMatching
    calls = _fits_only(monkeypatch, target, "_evaluate_rows", 2, torch.OutOfMemoryError("CUDA out of memory"))
    with caplog.at_level(logging.WARNING, logger="ppp.attacks.engine"):
        retried = attack(view, seed=1)
    rows = 2 * 4 // images_per_update  # updates x restarts
    assert calls[0] == rows and retried.oom_retries == (1 if rows == 4 else 2) and retried.chunk_rows == 2
    assert fitted.oom_retries == 0 and fitted.chunk_rows is None
    assert caplog.records[0].getMessage() == f"attack: out of memory with {rows} rows per pass; retrying with {rows // 2}"
    torch.testing.assert_close(retried.images, fitted.images, atol=1e-5, rtol=0)


def test_an_attack_that_does_not_fit_one_row_per_pass_stops_with_one_line(mnist_victims, monkeypatch):
    view, labels = _view(mnist_victims)
    calls = _fits_only(monkeypatch, PerLayerObjective, "_evaluate", 0, torch.OutOfMemoryError("CUDA out of memory"))
    monkeypatch.setattr(GradientMatching, "_evaluate", lambda self, x, rows, latent: self.per_layer(
        x, rows, self.chunk_rows, latent))  # even one row through the batched engine
    with pytest.raises(AttackOutOfMemory, match="out of memory with one row per pass") as caught:
        optimise(view, labels, _problem(view, engine="per_layer"), seed=1)
    assert "\n" not in str(caught.value) and calls == [6, 3, 1]


def test_the_attack_stage_reports_its_retries_and_writes_the_fitted_reconstructions(monkeypatch, tmp_path, caplog):
    """run_attack_cells (the attack job's stage): the retries and the rows per pass it ended with are in its
    log and its summary, which workflow/scripts/attack.py logs as the cell run's metric `oom_retries` and tag
    `rows_per_pass`; the reconstructions file equals a fitted run's."""
    from ppp import stages
    from ppp.client import ClientSetting
    from ppp.models import PrecodeSpec

    write_json(tmp_path / "meta.json", dict(dataset="mnist", channels=1, image_size=32, num_classes=10,
                                            mean=[0.1307], std=[0.3081]))
    stages.prepare_victims("mnist", str(VICTIMS), 32, 3, str(tmp_path / "victims.safetensors"))
    spec, setting = PrecodeSpec(bottleneck_size=16), ClientSetting(images=1)
    stages.init_model("mlp", "plain", str(tmp_path / "meta.json"), {"width": 16}, spec, 0, str(tmp_path / "m.safetensors"))
    stages.capture_gradients("mlp", "none", 0.0, {"distribution": "gaussian", "relative": False, "max_grad_norm": 1.0,
                                                  "delta": 1e-5, "clipping": "auto"}, "init",
                             str(tmp_path / "m.safetensors"), str(tmp_path / "meta.json"),
                             str(tmp_path / "victims.safetensors"), 3, {"width": 16}, spec, 0, torch.device("cpu"),
                             str(tmp_path / "g.safetensors"), setting=setting)
    results = {}
    for run in ("fitted", "retried"):
        if run == "retried":
            _fits_only(monkeypatch, PerLayerObjective, "_evaluate", 2, torch.OutOfMemoryError("CUDA out of memory"))
        cell = stages.AttackCell(str(tmp_path / "g.safetensors"), str(tmp_path / "m.safetensors"), False, 5,
                                 str(tmp_path / f"{run}.safetensors"))
        with caplog.at_level(logging.WARNING):
            (results[run],) = stages.run_attack_cells("mlp", "ig", {"iterations": 8, "engine": "per_layer"}, [cell],
                                                      str(tmp_path / "meta.json"), {"width": 16}, spec,
                                                      torch.device("cpu"), setting=setting)
    assert results["fitted"]["oom_retries"] == 0 and results["fitted"]["rows_per_pass"] is None
    assert results["retried"]["oom_retries"] == 1 and results["retried"]["rows_per_pass"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "attack: out of memory with 3 rows per pass; retrying with 1",
        "attack: ran out of memory 1 time(s); finished with 1 rows per pass"]
    fitted, retried = (load_tensors(tmp_path / f"{run}.safetensors") for run in ("fitted", "retried"))
    torch.testing.assert_close(retried["images"], fitted["images"], atol=1e-5, rtol=0)
    script = (REPO / "workflow" / "scripts" / "attack.py").read_text()
    assert '"oom_retries": summary["oom_retries"]' in script and '"rows_per_pass"' in script


def test_a_victims_file_cut_short_stops_the_workflow_at_parse_time_with_one_line(tmp_path):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    victims = tmp_path / "victims.npz"
    shutil.copy(VICTIMS, victims)
    _damage(victims, "truncated")
    config["datasets"]["mnist"]["victims"] = str(victims)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "-n"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"config key 'datasets.mnist.victims': {victims}: truncated or damaged .npz file (File is not a zip " \
           "file)" in output, output
    assert "Traceback" not in output and "ppp/io.py" not in output and "BadZipFile" not in output
