// Dates, durations and sizes for people.

/** An RFC 3339 time in the browser's locale ("" when absent). */
export function when(text) {
  return text ? new Date(text).toLocaleString() : "";
}

/** Seconds from `started_at` to `finished_at` (to now while running); null before it starts. */
export function durationSeconds(job, now = Date.now()) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return Math.max(0, (end - Date.parse(job.started_at)) / 1000);
}

/** "4.2 s", "3 min 5 s", "2 h 7 min"; "" for null. */
export function duration(seconds) {
  if (seconds === null) return "";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** Bytes as "10.6 kB". */
export function size(bytes) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}
