"""make look: what a researcher sees of a finished study, checked as a person would, in a headless browser.

Builds the Snakemake report (results/report/report.html) and logs it to the study's parent MLflow run,
starts the MLflow UI on localhost over the workflow's SQLite backend, and saves screenshots under
results/look/: the report's landing page, a figure in the report, the runs table and one attack run's
reconstruction. The UI is stopped at the end, whatever happens. Needs Debian's `chromium`
(apt-get install chromium); `--install` installs it where it is missing (as root).

    python tools/look.py [--configfile config/config.yaml] [--results results] [--port 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tools")]
from browser import Browser  # noqa: E402

# The MLflow UI's own settings, in its local storage before it loads: the runs of model training (not the
# GenAI pages), and its assistant panel closed (it would cover a third of every screenshot).
MLFLOW_SETTINGS = """try {
  localStorage.setItem("mlflow.workflowType_v1", JSON.stringify("machine_learning"));
  localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
  localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
} catch (e) {}"""
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# The report figure shown: the worst case per defence (one figure for the whole study).
REPORT_FIGURE = "results/plots/worst_case.png"


def find_browser(install: bool) -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("look: installing chromium with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return find_browser(False)
    sys.exit("look: no headless browser: install Debian's chromium (apt-get install chromium), or run with --install "
             "as root")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"look: the MLflow UI did not answer at {url} within {seconds:.0f} s")


def build_report(configfile: str, results: Path) -> Path:
    report = results / "report" / "report.html"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", configfile,
               "--report", str(report)]
    done = subprocess.run(command, cwd=results.parent, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"look: the report could not be built:\n{done.stderr[-3000:]}")
    return report


def look_at_report(page: Browser, report: Path, out: Path) -> list[tuple[Path, str]]:
    """The report's landing page (the workflow description), and one figure opened as a reader would."""
    page.open(report.as_uri(), 1400, 1000)
    if not page.wait_for("document.body.innerText.includes('The answer')", timeout=60):
        raise RuntimeError(f"look: {report}: the landing page shows no verdicts ('The answer')")
    # The report centres its description in the window: a window taller than the description shows all
    # of it; the shot keeps the navigation and the description, not the rule graph beside it.
    description = "[...document.querySelectorAll('h1')].find(h => h.innerText.includes('Gradient leakage')).parentElement"
    height = page.evaluate(f"{description}.getBoundingClientRect().height")
    page.call("Emulation.setDeviceMetricsOverride", width=1400, height=int(height) + 120, deviceScaleFactor=1,
              mobile=False)
    time.sleep(1)
    box = page.evaluate(f"(() => {{ const r = {description}.getBoundingClientRect(); "
                        "return {x: 0, y: Math.max(0, r.top - 20), width: r.right + 8, height: r.height + 40}; })()")
    shots = [(page.screenshot(out / "report_landing.png", clip=box), "the report's landing page")]
    # The report's app has no address per result: open the figure through it, as a click would.
    page.evaluate(f"(() => {{ const path = {json.dumps(REPORT_FIGURE)}; app.showResultInfo(path); "
                  "app.setView({content: 'img', contentPath: results[path].data_uri, resultPath: path}); })()")
    page.call("Emulation.setDeviceMetricsOverride", width=1500, height=1100, deviceScaleFactor=1, mobile=False)
    page.wait_for("[...document.images].some(i => i.complete && i.naturalWidth > 300)", timeout=30, settle=2)
    shots.append((page.screenshot(out / "report_figure.png"), f"{REPORT_FIGURE} in the report"))
    return shots


def look_at_mlflow(page: Browser, base: str, ids: dict, out: Path) -> list[tuple[Path, str]]:
    """The runs table found by a search on the cell's params, an attack run's reconstruction, a training
    run's per-epoch curves and the parent run's verdict table."""
    experiment = f"{base}/#/experiments/{ids['experiment_id']}"
    shots = []
    search = "params.attack = 'ig' and params.defense = 'none'"
    page.open(f"{experiment}/runs?searchFilter={urllib.parse.quote(search)}", 1600, 1000, before_load=MLFLOW_SETTINGS)
    page.wait_for("document.body.innerText.includes('matching run')", timeout=60, settle=3)
    # The matching runs are nested under their invocation's parent run: unfold it, as a reader would.
    page.evaluate("document.querySelector('[data-component-id$=\"runnamecellrenderer.tsx_46\"]')?.click()")
    time.sleep(2)
    shots.append((page.screenshot(out / "mlflow_runs.png"), f"the runs table, searched for {search}"))
    if ids["attack"] is not None:
        run = ids["attack"].info.run_id
        page.open(f"{experiment}/runs/{run}/artifactPath/{ids['image']}", 1600, 1000)
        page.wait_for("[...document.images].some(i => i.complete && i.naturalWidth > 100)", timeout=60, settle=2)
        shots.append((page.screenshot(out / "mlflow_attack_run.png"), f"attack run {ids['attack'].info.run_name}"))
    else:
        print("look: no attack run has a reconstruction image in MLflow", file=sys.stderr)
    if ids["train"] is not None:
        run = ids["train"].info.run_id
        page.open(f"{experiment}/runs/{run}/model-metrics", 1600, 1000)
        page.wait_for("document.body.innerText.includes('test_accuracy_epoch')", timeout=60, settle=3)
        shots.append((page.screenshot(out / "mlflow_training_run.png"), f"training run {ids['train'].info.run_name}"))
    if ids["parent"] is not None:
        run = ids["parent"].info.run_id
        page.open(f"{experiment}/runs/{run}/artifactPath/verdicts.json", 1600, 1000)
        page.wait_for("document.body.innerText.includes('verdict')", timeout=60, settle=2)
        shots.append((page.screenshot(out / "mlflow_verdicts.png"), "the parent run's verdict table"))
    return shots


def study_runs(uri: str, experiment: str) -> dict:
    """The ids a reader opens: the experiment, the newest parent run that holds the verdicts, and an
    attack run with its reconstruction (Inverting Gradients on the undefended model where there is one:
    the leak is what a reader looks for first)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"look: no MLflow experiment {experiment!r} at {uri}: run the workflow first (make run)")
    runs = client.search_runs([found.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if r.data.tags.get("ppp.kind") == "invocation" and "verdicts_undecided" in r.data.metrics]
    attacks = [r for r in runs if r.data.tags.get("rule") == "attack"]
    attacks.sort(key=lambda r: (r.data.params.get("defense") != "none", r.data.params.get("attack") != "ig",
                                r.data.params.get("images_per_update") != "1"))
    attack, image = None, None
    for run in attacks:
        files = [a.path for a in client.list_artifacts(run.info.run_id, "reconstruction")]
        if files:
            attack, image = run, files[0]
            break
    train = next((r for r in runs if r.data.tags.get("rule") == "train" and r.data.params.get("defense") == "ppp"),
                 next((r for r in runs if r.data.tags.get("rule") == "train"), None))
    return dict(client=client, experiment_id=found.experiment_id, parent=parents[0] if parents else None,
                attack=attack, image=image, train=train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--results", default="results", help="the finished study's results folder")
    parser.add_argument("--port", type=int, default=0, help="the MLflow UI's port (0: a free one)")
    parser.add_argument("--install", action="store_true", help="apt-get install chromium where it is missing")
    args = parser.parse_args(argv)
    results = Path(args.results).resolve()
    if not (results / "tables" / "verdicts.csv").exists():
        sys.exit(f"look: {results}/tables/verdicts.csv is missing: run the workflow first (make run)")
    browser = find_browser(args.install)
    from ppp.tracking import sqlite_uri

    out = results / "look"
    report = build_report(str(Path(args.configfile).resolve()), results)
    uri = sqlite_uri(results / "mlflow" / "mlflow.db")
    ids = study_runs(uri, "ppp")
    if ids["parent"] is not None:  # the parent run holds the report beside the verdicts (overwritten on re-runs)
        ids["client"].log_artifact(ids["parent"].info.run_id, str(report))
    port = args.port or free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri, "--default-artifact-root",
         (results / "mlflow" / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shots = []
    try:
        with Browser(browser) as page:
            shots += look_at_report(page, report, out)
            wait_for(f"http://127.0.0.1:{port}/health")
            shots += look_at_mlflow(page, f"http://127.0.0.1:{port}", ids, out)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    for path, what in shots:
        print(f"look: {path}: {what}")
    print(f"look: screenshots in {out}/; the report is {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
