"""`make timing` (ppp.run_timing): per-rule wall, start-up and CPU seconds from a Snakemake log and the
jobs' own logs."""

from pathlib import Path

from ppp.run_timing import load_run, main, timing_table

SNAKEMAKE_LOG = """Assuming unrestricted shared filesystem usage.
  Date: 2026-12-06 07:54:50
Provided cores: 2
[Sun Dec  6 07:54:52 2026]
rule attack_lenet_b1s1_ig:
    input: a, b
    log: results/logs/attack/cifar10.log
    jobid: 3
    wildcards: dataset=cifar10, state=init
    threads: 2
    resources: tmpdir=/tmp
Shell command: None
[Sun Dec  6 07:54:53 2026]
localrule evaluate:
    log: results/logs/evaluate/mnist.log
    jobid: 4
    wildcards: dataset=mnist
Shell command: None
[Sun Dec  6 07:55:02 2026]
Finished jobid: 4 (Rule: evaluate)
[Sun Dec  6 07:56:32 2026]
Finished jobid: 3 (Rule: attack_lenet_b1s1_ig)
[Sun Dec  6 07:56:33 2026]
localrule never_finished:
    jobid: 5
"""


def _run_dir(tmp_path: Path) -> Path:
    (tmp_path / ".snakemake" / "log").mkdir(parents=True)
    (tmp_path / ".snakemake" / "log" / "2026-12-06T075450.snakemake.log").write_text(SNAKEMAKE_LOG)
    logs = tmp_path / "results" / "logs"
    (logs / "attack").mkdir(parents=True)
    (logs / "attack" / "cifar10.log").write_text(
        "2026-12-06 07:55:00,000 INFO ppp.stages: attack done\n"
        "2026-12-06 07:56:31,000 INFO ppp.jobs: job finished: 96.00 s wall since the process started, "
        "150.00 s CPU, 2 torch thread(s)\n")
    return tmp_path  # evaluate's log is missing: its CPU time is unknown, not zero


def test_jobs_rules_threads_and_times_come_from_the_snakemake_log_and_the_jobs_logs(tmp_path):
    run = load_run(_run_dir(tmp_path))
    assert run.cores == 2 and run.wall_s == 103  # 07:54:50 to the last finished job
    jobs = {j.rule: j for j in run.jobs}
    assert set(jobs) == {"attack_lenet_b1s1_ig", "evaluate"}  # the unfinished job is not counted
    attack, evaluate = jobs["attack_lenet_b1s1_ig"], jobs["evaluate"]
    assert (attack.threads, attack.wildcards, attack.cpu_s) == (2, "dataset=cifar10, state=init", 150.0)
    assert attack.seconds == 100 and attack.process_wall_s == 96
    assert (evaluate.threads, evaluate.seconds, evaluate.cpu_s) == (1, 9, None)


def test_the_table_gives_start_up_and_cpu_share_per_rule(tmp_path):
    table = timing_table(load_run(_run_dir(tmp_path)))
    attack_row = next(line for line in table.splitlines() if line.startswith("| attack_lenet_b1s1_ig | 1 |"))
    # wall 100, start-up 100 - 96 = 4, CPU 150 of 96 s x 2 threads = 78%
    assert attack_row == "| attack_lenet_b1s1_ig | 1 | 2 | 100 | 100 | 4 | 150 | 78% |"
    assert "| evaluate | 1 | 1 | 9 | 9 | - | - | - |" in table
    assert table.index("| attack_lenet") < table.index("| evaluate")  # longest rule first


def test_no_run_yet_is_one_line_and_exit_1(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "run the workflow first" in capsys.readouterr().out


def test_a_later_invocation_that_ran_nothing_does_not_hide_the_run(tmp_path):
    """`make run` with nothing left to do, or a dry run, writes its own Snakemake log with no jobs."""
    import os

    run_dir = _run_dir(tmp_path)
    empty = run_dir / ".snakemake" / "log" / "2026-12-06T090000.snakemake.log"
    empty.write_text("  Date: 2026-12-06 09:00:00\nNothing to be done.\n")
    os.utime(empty, (2e9, 2e9))  # newer than the run's log
    assert {j.rule for j in load_run(run_dir).jobs} == {"attack_lenet_b1s1_ig", "evaluate"}


def test_a_fedavg_rule_whose_name_carries_its_lr_is_counted(tmp_path):
    """FedAvg's rules are named by the setting, lr included (attack_lenet_b4s2lr0.1_head)."""
    text = SNAKEMAKE_LOG.replace("attack_lenet_b1s1_ig", "attack_lenet_b4s2lr0.1_head")
    run_dir = _run_dir(tmp_path)
    (run_dir / ".snakemake" / "log" / "2026-12-06T075450.snakemake.log").write_text(text)
    assert {j.rule for j in load_run(run_dir).jobs} == {"attack_lenet_b4s2lr0.1_head", "evaluate"}


def test_a_jobs_process_wall_time_lies_within_the_time_its_parent_saw_it_run():
    """The wall seconds a job logs: psutil's create_time rounds the boot time to a whole second, which put
    processes up to a second before Snakemake's stamp of their start (CI failed on it)."""
    import subprocess
    import sys
    import time

    before = time.monotonic()
    out = subprocess.run([sys.executable, "-c", "from ppp.jobs import process_wall_seconds as w; print(w())"],
                         capture_output=True, text=True, check=True).stdout
    seen = time.monotonic() - before
    # 20 ms: the kernel's clock tick (the process's start is kept in ticks).
    assert 0 < float(out) <= seen + 0.02, (float(out), seen)
