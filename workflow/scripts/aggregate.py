import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import figures, landing, report, verdicts
from ppp.io import write_text
from ppp.jobs import job

out = snakemake.output
thresholds = verdicts.Thresholds(**snakemake.params.verdicts)
with job(snakemake, {"verdicts": snakemake.params.verdicts}) as run:
    reconstructions = report.collect_reconstructions(snakemake.input.metrics)
    utility, correct = report.collect_utility(snakemake.input.utility)
    summary = report.summarize(reconstructions, utility, thresholds.success_ssim)
    table = verdicts.judge(reconstructions, correct, report.learning_curves(utility), thresholds)
    worst = report.worst_case(summary, table)
    report.write_csv(reconstructions, out.reconstructions)
    report.write_csv(utility, out.utility)
    report.write_csv(summary, out.summary)
    report.write_csv(table, out.verdicts)
    report.write_csv(report.findings(summary, table), out.findings)
    report.write_csv(worst, out.worst_case)
    figures.privacy_utility_plot(summary, out.privacy_utility)
    figures.batch_size_plot(summary, out.batch_size)
    figures.learning_curve_plot(utility, out.learning_curves, thresholds.plateau_epochs, thresholds.plateau_gain)
    figures.worst_case_plot(worst, out.worst_case_plot, thresholds.success_ssim)
    write_text(out.landing, landing.landing_rst(table, snakemake.params.preset))
    plots = (out.privacy_utility, out.batch_size, out.learning_curves, out.worst_case_plot)
    for path in (out.reconstructions, out.utility, out.summary, out.verdicts, out.findings, out.worst_case, *plots):
        run.log_artifact(path)
    # The study's answer on the invocation's parent run: the verdict table (a table the MLflow UI shows),
    # its counts, and every figure.
    run.log_parent_table(out.verdicts, "verdicts.json", ["claim", "verdict", "dataset", "arch", "batch_size",
                                                        "local_steps", "local_lr", "local_batch", "defense",
                                                        "noise_scale", "attack", "statistic", "estimate", "ci_low",
                                                        "ci_high", "threshold"])
    run.log_parent_artifact(out.verdicts)
    run.log_parent_metrics({f"verdicts_{k}": v for k, v in verdicts.counts(table).items()})
    for path in plots:
        run.log_parent_artifact(path, "figures")
    for path in snakemake.input.grids:
        run.log_parent_artifact(path, "figures/reconstructions")
