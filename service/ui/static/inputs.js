// A job's inputs (checkpoint, datasets), named as their uploader named them: each artifact's
// record comes from GET /v1/artifacts/{id}. A filename is text the uploader chose, so it is
// only ever shown through textContent (dom.js).

import { getJson } from "./api.js";
import { el, replace } from "./dom.js";
import { size } from "./format.js";

function describe(role, artifact) {
  return el("tr", { "data-input": role },
    el("td", { text: role }),
    el("td", {}, el("code", { text: artifact.id })),
    el("td", { class: "filename", text: artifact.filename || "" }),
    el("td", { text: artifact.kind }),
    el("td", { text: size(artifact.size_bytes) }),
  );
}

async function lookUp(role, id) {
  try {
    return describe(role, await getJson(`v1/artifacts/${encodeURIComponent(id)}`));
  } catch (error) {
    return el("tr", { "data-input": role }, el("td", { text: role }), el("td", {}, el("code", { text: id })),
      el("td", { class: "error", colspan: 3, text: error.message }));
  }
}

/** Fill `slot` with a table of the job's input artifacts. */
export async function showInputs(slot, job) {
  const roles = Object.entries(job.inputs || {}).filter(([, value]) => value && value.artifact_id);
  const rows = await Promise.all(roles.map(([role, value]) => lookUp(role, value.artifact_id)));
  const head = el("tr", {}, ...["Input", "Artifact", "File", "Kind", "Size"].map((t) => el("th", { text: t })));
  replace(slot, el("h3", { text: "Inputs" }),
    el("table", { class: "inputs" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  slot.setAttribute("data-ready", "");
}
