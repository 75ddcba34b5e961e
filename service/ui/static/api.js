// The public JSON API (the routes the SDK in gif_client/client.py uses), with the key as a
// bearer token. Paths are relative to the page (/ui), so the page works under a path prefix.

import { getKey } from "./key.js";

/** A failed request: the problem+json title/detail and code when the server sent them. */
export class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem && (problem.detail || problem.title);
    super(detail ? `${status}: ${detail}` : `HTTP ${status}`);
    this.status = status;
    this.code = problem && problem.code;
  }
}

async function request(path) {
  const response = await fetch(path.replace(/^\//, ""), {
    headers: { Authorization: `Bearer ${getKey() || ""}`, Accept: "application/json" },
    cache: "no-store",
  });
  if (!response.ok) {
    const problem = await response.json().catch(() => null);
    throw new ApiError(response.status, problem);
  }
  return response;
}

/** GET a JSON document. */
export async function getJson(path) {
  return (await request(path)).json();
}

/** GET an artifact's bytes as a Blob (a download needs the key header, so no plain link). */
export async function getBlob(path) {
  return (await request(path)).blob();
}

/** One page of the tenant's jobs, newest first (cursor pagination, as GET /v1/jobs). */
export function listJobs(after, limit) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (after) query.set("after", after);
  return getJson(`v1/jobs?${query}`);
}

/** One job. */
export function getJob(id) {
  return getJson(`v1/jobs/${encodeURIComponent(id)}`);
}
