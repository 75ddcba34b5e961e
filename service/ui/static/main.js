// The page's entry: ask for the API key once (kept in sessionStorage, key.js), then route by
// the URL's hash: "#/" lists the tenant's jobs, "#/jobs/<id>" shows one.

import { ApiError, listJobs } from "./api.js";
import { el, replace } from "./dom.js";
import { leaveJob, showJob } from "./job.js";
import { showJobs } from "./jobs.js";
import { forgetKey, getKey, setKey } from "./key.js";

const main = () => document.getElementById("main");

function keyForm(message) {
  const input = el("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", required: "" });
  const form = el("form", { id: "key-form" },
    el("label", { for: "api-key", text: "API key" }), input,
    el("button", { type: "submit", text: "Open" }),
    message ? el("p", { class: "error", text: message }) : null);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    checkKey(input.value.trim());
  });
  replace(main(), el("section", { id: "key" }, el("h2", { text: "Sign in" }),
    el("p", { text: "The key stays in this browser tab's session storage and is sent only to this service." }), form));
  input.focus();
}

async function checkKey(key) {
  setKey(key);
  try {
    await listJobs(null, 1);
  } catch (error) {
    forgetKey();
    keyForm(error instanceof ApiError && error.status === 401 ? "That key was not accepted." : error.message);
    return;
  }
  route();
}

function fail(error) {
  if (error instanceof ApiError && error.status === 401) {
    forgetKey();
    keyForm("The key is no longer accepted.");
    return;
  }
  replace(main(), el("p", { class: "error", role: "alert", text: error.message }));
}

function route() {
  leaveJob();
  document.getElementById("forget-key").hidden = !getKey();
  if (!getKey()) {
    keyForm();
    return;
  }
  const match = /^#\/jobs\/([^/]+)$/.exec(location.hash);
  const view = match ? showJob(main(), decodeURIComponent(match[1])) : showJobs(main());
  view.catch(fail);
}

document.getElementById("forget-key").addEventListener("click", () => {
  forgetKey();
  route();
});
window.addEventListener("hashchange", route);
route();
