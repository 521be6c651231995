import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import report, verdicts
from ppp.jobs import job

out = snakemake.output
thresholds = verdicts.Thresholds(**snakemake.params.verdicts)
with job(snakemake, {"verdicts": snakemake.params.verdicts}) as run:
    reconstructions = report.collect_reconstructions(snakemake.input.metrics)
    utility, correct = report.collect_utility(snakemake.input.utility)
    summary = report.summarize(reconstructions, utility, thresholds.success_ssim)
    table = verdicts.judge(reconstructions, correct, report.learning_curves(utility), thresholds)
    report.write_csv(reconstructions, out.reconstructions)
    report.write_csv(utility, out.utility)
    report.write_csv(summary, out.summary)
    report.write_csv(table, out.verdicts)
    report.write_csv(report.findings(summary, table), out.findings)
    report.write_csv(report.worst_case(summary, table), out.worst_case)
    report.privacy_utility_plot(summary, out.privacy_utility)
    report.batch_size_plot(summary, out.batch_size)
    report.learning_curve_plot(utility, out.learning_curves, thresholds.plateau_epochs, thresholds.plateau_gain)
    for path in (out.reconstructions, out.utility, out.summary, out.verdicts, out.findings, out.worst_case,
                 out.privacy_utility, out.batch_size, out.learning_curves):
        run.log_artifact(path)
    # The study's answer on the invocation's parent run: the verdict table (a table the MLflow UI shows)
    # and its counts.
    run.log_parent_table(out.verdicts, "verdicts.json")
    run.log_parent_artifact(out.verdicts)
    run.log_parent_metrics({f"verdicts_{k}": v for k, v in verdicts.counts(table).items()})
