// How a job's progress is shown: the same rules as gif_client/progress.py (the CLI's `wait`
// prints that module's line). The page adds no stage labels: stage, fraction and message are
// the job view's (workers/progress.py writes them).

/** A fraction as a whole percentage, rounded down; null when absent or not finite. */
export function percent(fraction) {
  if (typeof fraction !== "number" || !Number.isFinite(fraction)) return null;
  return Math.max(0, Math.min(100, Math.floor(100 * fraction)));
}

/** "status stage NN% message", leaving out what the job does not say. */
export function progressLine(job) {
  const progress = job.progress || {};
  const share = percent(progress.fraction);
  const parts = [
    String(job.status || ""),
    String(progress.stage || ""),
    share === null ? "" : `${share}%`,
    String(progress.message || ""),
  ];
  return parts.filter((part) => part).join(" ");
}
