import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import report
from ppp.jobs import job

out = snakemake.output
verdicts = report.Verdicts(**snakemake.params.verdicts)
with job(snakemake, {"verdicts": snakemake.params.verdicts}) as run:
    reconstructions = report.collect_reconstructions(snakemake.input.metrics)
    utility, correct = report.collect_utility(snakemake.input.utility)
    summary = report.summarize(reconstructions, utility, verdicts.success_ssim)
    report.write_csv(reconstructions, out.reconstructions)
    report.write_csv(utility, out.utility)
    report.write_csv(summary, out.summary)
    report.write_csv(report.findings(summary, correct, verdicts), out.findings)
    report.write_csv(report.worst_case(summary, correct, verdicts), out.worst_case)
    report.privacy_utility_plot(summary, out.privacy_utility)
    report.batch_size_plot(summary, out.batch_size)
    for path in (out.reconstructions, out.utility, out.summary, out.findings, out.worst_case, out.privacy_utility,
                 out.batch_size):
        run.log_artifact(path)
