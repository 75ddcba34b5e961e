// One job: its live progress (polling GET /v1/jobs/{id} until it is terminal), its inputs, then
// its error or its report's charts, and its result artifacts to download.

import { getBlob, getJob, getJson } from "./api.js";
import { el, replace } from "./dom.js";
import { duration, durationSeconds, size, when } from "./format.js";
import { showInputs } from "./inputs.js";
import { percent, progressLine } from "./progress.js";
import { reportCharts } from "./report.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1000;

/** Bumped whenever another view opens: a poll of a view no longer shown stops. */
let generation = 0;

function facts(job) {
  const rows = [["Type", job.type], ["Status", job.status], ["Created", when(job.created_at)],
    ["Duration", duration(durationSeconds(job))], ["Attempt", `${job.attempt} of ${job.max_attempts}`]];
  if (job.estimate) {
    const { seconds, based_on: jobs } = job.estimate;
    rows.push(["Estimate", `${duration(seconds)}, the median of ${jobs} job${jobs === 1 ? "" : "s"} like it`]);
  }
  return el("dl", { class: "facts" }, ...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

function progressBox(job) {
  const share = percent(job.progress && job.progress.fraction);
  return el("div", { class: "progress" },
    el("progress", { max: 100, value: share === null ? null : share }),
    el("p", { "data-progress-line": "", text: progressLine(job) }));
}

function errorBox(job) {
  if (!job.error) return null;
  return el("section", { class: "error" }, el("h3", { text: "Error" }),
    el("p", {}, el("code", { text: job.error.code || "" }), " ", job.error.message || ""));
}

async function download(entry, button) {
  button.disabled = true;
  try {
    const url = URL.createObjectURL(await getBlob(entry.download_url));
    const link = el("a", { href: url, download: `${entry.kind}.${entry.format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } finally {
    button.disabled = false;
  }
}

function downloadItem(entry) {
  const button = el("button", { type: "button", class: "download", "data-artifact": entry.id,
    text: `${entry.kind}.${entry.format} (${size(entry.size_bytes)})` });
  const note = el("span", { class: "error" });
  button.addEventListener("click", () => {
    note.textContent = "";
    download(entry, button).catch((error) => { note.textContent = error.message; });
  });
  return el("li", {}, button, " ", note);
}

function artifacts(job) {
  const entries = (job.result && job.result.artifacts) || [];
  if (!entries.length) return null;
  return el("section", { id: "artifacts" }, el("h3", { text: "Artifacts" }), el("ul", {}, ...entries.map(downloadItem)));
}

async function charts(job) {
  const entry = ((job.result && job.result.artifacts) || []).find((a) => a.kind === "report" && a.format === "json");
  const report = entry ? await getJson(entry.download_url) : {};
  const figures = reportCharts(job, report);
  return el("section", { id: "charts" }, el("h3", { text: "Report" }),
    ...(figures.length ? figures : [el("p", { text: "Nothing to chart for this job." })]));
}

function request(job) {
  return el("details", { class: "request" }, el("summary", { text: "Request" }),
    el("pre", { text: JSON.stringify(job.request, null, 2) }));
}

/** The view's parts: `live` changes with each poll, the others are filled once. */
function skeleton(job) {
  const parts = { live: el("div", { id: "live" }), inputs: el("section", { id: "inputs" }), outcome: el("div", { id: "outcome" }) };
  parts.node = el("section", { id: "job" }, el("h2", {}, "Job ", el("code", { text: job.id })),
    parts.live, parts.outcome, parts.inputs, request(job));
  return parts;
}

function update(parts, job) {
  parts.node.setAttribute("data-status", job.status);
  replace(parts.live, facts(job), progressBox(job));
}

/** The report's charts, or why they cannot be drawn (an expired or unreadable report). */
function chartsOrWhy(job) {
  return charts(job).catch((error) => el("section", { id: "charts" },
    el("p", { class: "error", text: `The report could not be read: ${error.message}` })));
}

async function finish(parts, job) {
  const results = job.status === "succeeded" ? await chartsOrWhy(job) : null;
  replace(parts.outcome, errorBox(job), results, artifacts(job));
  parts.node.setAttribute("data-done", "");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Show job `id` in `root`, polling while it runs; charts once it has succeeded. */
export async function showJob(root, id) {
  const mine = ++generation;
  let job = await getJob(id);
  if (mine !== generation) return;
  const parts = skeleton(job);
  update(parts, job);
  replace(root, parts.node);
  showInputs(parts.inputs, job).catch(() => {});
  while (!TERMINAL.has(job.status)) {
    await sleep(POLL_MS);
    if (mine !== generation) return;
    job = await getJob(id);
    if (mine !== generation) return;
    update(parts, job);
  }
  await finish(parts, job);
}

/** Stop any poll (another view is opening). */
export function leaveJob() {
  generation += 1;
}
