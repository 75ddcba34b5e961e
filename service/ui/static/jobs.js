// The tenant's jobs, newest first, a page at a time (GET /v1/jobs with its `after` cursor).

import { listJobs } from "./api.js";
import { el, replace } from "./dom.js";
import { duration, durationSeconds, when } from "./format.js";

const PAGE = 20;

function row(job) {
  return el("tr", { "data-job": job.id },
    el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, text: job.id })),
    el("td", { text: job.type }),
    el("td", {}, el("span", { class: `status ${job.status}`, text: job.status })),
    el("td", { text: when(job.created_at) }),
    el("td", { text: duration(durationSeconds(job)) }),
  );
}

function table(jobs) {
  const head = el("tr", {}, ...["Job", "Type", "Status", "Created", "Duration"].map((t) => el("th", { text: t })));
  return el("table", { class: "jobs" }, el("thead", {}, head), el("tbody", {}, ...jobs.map(row)));
}

/** Show the list in `root`; `cursors` holds the `after` of each page seen (for "Newer"). */
export async function showJobs(root, cursors = [null]) {
  const page = await listJobs(cursors[cursors.length - 1], PAGE);
  const newer = el("button", { type: "button", disabled: cursors.length < 2 || null, text: "Newer",
    onclick: () => showJobs(root, cursors.slice(0, -1)) });
  const older = el("button", { type: "button", disabled: !page.has_more || null, text: "Older",
    onclick: () => showJobs(root, [...cursors, page.last_id]) });
  const body = page.data.length ? table(page.data) : el("p", { class: "empty", text: "No jobs yet." });
  replace(root, el("section", { id: "jobs" }, el("h2", { text: "Jobs" }), body,
    el("nav", { class: "pager" }, newer, older)));
}
