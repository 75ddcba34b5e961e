// A finished job's report as charts: per-class accuracy before/after, the forgetting audit's
// loss histograms (when the job had a holdout), and the solver's residual per iteration of each
// Newton step. The shapes are those workers/results.py writes (the `report` artifact) and
// gif/audit.py's loss_histograms.

import { barChart, histogram, logLines } from "./charts.js";
import { el } from "./dom.js";

/** Class names: a Hugging Face config's id2label when the request has one, else the indices. */
function classNames(job, count) {
  const config = (job.request && job.request.model && job.request.model.config) || {};
  const names = config.id2label && typeof config.id2label === "object" ? config.id2label : {};
  return Array.from({ length: count }, (_, i) => String(names[i] ?? names[String(i)] ?? i));
}

function perClass(job, report) {
  const accuracy = report.per_class_accuracy || (job.result && job.result.summary && job.result.summary.per_class_accuracy);
  if (!accuracy || !Array.isArray(accuracy.before)) return null;
  return barChart({
    title: `Accuracy per class (${accuracy.data || "data"})`,
    categories: classNames(job, accuracy.before.length),
    series: [{ name: "before", values: accuracy.before }, { name: "after", values: accuracy.after || [] }],
    xTitle: "class",
  });
}

function lossHistograms(report) {
  const histograms = report.report && report.report.audit && report.report.audit.histograms;
  if (!histograms || !Array.isArray(histograms.edges)) return [];
  return ["before", "after"].filter((stage) => histograms[stage]).map((stage) => histogram({
    title: `Audit: per-sample loss ${stage} the edit`,
    edges: histograms.edges,
    series: Object.entries(histograms[stage]).map(([name, counts]) => ({ name, counts })),
    xTitle: `loss (${stage})`,
  }));
}

function residuals(report) {
  const steps = (report.report && report.report.newton_steps) || [];
  const series = steps
    .filter((step) => step.solver && Array.isArray(step.solver.residual_history))
    .map((step) => ({ name: `Newton step ${step.newton_step}`, values: step.solver.residual_history }));
  if (!series.length) return null;
  return logLines({ title: "Solver residual per iteration", series, xTitle: "iteration" });
}

/** Figures for the report (an empty list when it has nothing to chart). */
export function reportCharts(job, report) {
  const charts = [perClass(job, report), ...lossHistograms(report), residuals(report)];
  return charts.filter(Boolean).map((chart) => el("figure", {}, chart));
}
