// Charts as inline SVG built with DOM calls (no library, nothing fetched): grouped bars, overlaid
// histograms and line curves on a log scale. Labels go in as text nodes (dom.js).

import { svg } from "./dom.js";

const WIDTH = 520;
const HEIGHT = 240;
const PAD = { left: 52, right: 12, top: 28, bottom: 40 };
const COLOURS = 4; // series classes s0..s3 in page.css
const PLOT_W = WIDTH - PAD.left - PAD.right;
const PLOT_H = HEIGHT - PAD.top - PAD.bottom;

/** The chart's frame: an <svg> with a title for screen readers. */
function frame(title) {
  return svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img", "aria-label": title,
  }, svg("title", { text: title }));
}

/** A linear scale from [lo, hi] to [a, b]. */
function scale(lo, hi, a, b) {
  const span = hi - lo || 1;
  return (value) => a + ((value - lo) / span) * (b - a);
}

function yAxis(ticks, y, format) {
  const group = svg("g", { class: "axis" });
  for (const tick of ticks) {
    const at = y(tick);
    group.append(
      svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: at, y2: at, class: "grid" }),
      svg("text", { x: PAD.left - 6, y: at + 4, "text-anchor": "end", text: format(tick) }),
    );
  }
  return group;
}

function xLabel(x, text) {
  return svg("text", { x, y: HEIGHT - PAD.bottom + 16, "text-anchor": "middle", class: "tick", text });
}

function axisTitle(text) {
  return svg("text", { x: PAD.left + PLOT_W / 2, y: HEIGHT - 4, "text-anchor": "middle", class: "axis-title", text });
}

/** A category name short enough for the axis (the bar's tooltip has it whole). */
function short(name) {
  const text = String(name);
  return text.length > 8 ? `${text.slice(0, 7)}…` : text;
}

/** The class of series `i`: colours repeat after COLOURS series. */
function tone(i) {
  return `s${i % COLOURS}`;
}

/** A legend above the plot: one swatch per series. */
export function legend(names) {
  const group = svg("g", { class: "legend" });
  const step = Math.min(120, (PLOT_W - 8) / Math.max(1, names.length));
  names.forEach((name, i) => {
    const x = PAD.left + 8 + i * step;
    group.append(
      svg("rect", { x, y: 8, width: 10, height: 10, class: tone(i) }),
      svg("text", { x: x + 14, y: 17, text: name }),
    );
  });
  return group;
}

/** Grouped bars: `categories` along x, one bar per series in each, values in [0, yMax]. */
export function barChart({ title, categories, series, yMax = 1, xTitle = "", format = (v) => v.toFixed(1) }) {
  const chart = frame(title);
  const y = scale(0, yMax, PAD.top + PLOT_H, PAD.top);
  chart.append(yAxis([0, yMax / 2, yMax], y, format));
  const slot = PLOT_W / Math.max(1, categories.length);
  const bar = (slot * 0.8) / Math.max(1, series.length);
  const every = Math.ceil(categories.length / 20);
  categories.forEach((category, c) => {
    const left = PAD.left + c * slot + slot * 0.1;
    series.forEach((one, s) => {
      const value = Math.max(0, Math.min(yMax, Number(one.values[c]) || 0));
      const rect = svg("rect", {
        x: left + s * bar, y: y(value), width: Math.max(1, bar - 1), height: y(0) - y(value), class: tone(s),
      }, svg("title", { text: `${category}: ${one.name} ${format(value)}` }));
      chart.append(rect);
    });
    if (c % every === 0) chart.append(xLabel(left + slot * 0.4, short(category)));
  });
  chart.append(legend(series.map((one) => one.name)), axisTitle(xTitle));
  return chart;
}

/** Histograms over shared bin `edges`, overlaid (translucent bars): each bin's share of its
 * series' samples, so that sets of different sizes compare. */
export function histogram({ title, edges, series, xTitle = "" }) {
  const chart = frame(title);
  const shares = series.map((one) => {
    const total = one.counts.reduce((sum, count) => sum + count, 0) || 1;
    return one.counts.map((count) => count / total);
  });
  const top = Math.max(0.01, ...shares.flat());
  const x = scale(edges[0], edges[edges.length - 1], PAD.left, PAD.left + PLOT_W);
  const y = scale(0, top, PAD.top + PLOT_H, PAD.top);
  chart.append(yAxis([0, top / 2, top], y, (v) => `${Math.round(100 * v)}%`));
  series.forEach((one, s) => {
    shares[s].forEach((share, i) => {
      if (!share) return;
      chart.append(svg("rect", {
        x: x(edges[i]), y: y(share), width: Math.max(1, x(edges[i + 1]) - x(edges[i]) - 0.5),
        height: y(0) - y(share), class: `${tone(s)} translucent`,
      }, svg("title", { text: `${one.name}: ${one.counts[i]} in [${edges[i].toFixed(2)}, ${edges[i + 1].toFixed(2)})` })));
    });
  });
  const last = edges[edges.length - 1];
  chart.append(xLabel(x(edges[0]), edges[0].toFixed(1)), xLabel(x(last), `${last.toFixed(1)}+`));
  chart.append(legend(series.map((one) => one.name)), axisTitle(xTitle));
  return chart;
}

/** Curves on a log-scale y axis: one polyline path per series, x = 1..n (iterations). */
export function logLines({ title, series, xTitle = "" }) {
  const chart = frame(title);
  const values = series.flatMap((one) => one.values).filter((v) => v > 0 && Number.isFinite(v));
  const lo = Math.floor(Math.log10(Math.min(...values, 1)));
  const hi = Math.ceil(Math.log10(Math.max(...values, 1e-12)));
  const longest = Math.max(2, ...series.map((one) => one.values.length));
  const x = scale(1, longest, PAD.left, PAD.left + PLOT_W);
  const y = scale(lo, hi === lo ? lo + 1 : hi, PAD.top + PLOT_H, PAD.top);
  const decades = [];
  for (let d = lo; d <= hi; d += Math.max(1, Math.ceil((hi - lo) / 5))) decades.push(d);
  chart.append(yAxis(decades, y, (d) => `1e${d}`));
  series.forEach((one, s) => {
    const points = one.values
      .map((v, i) => [i + 1, v])
      .filter(([, v]) => v > 0 && Number.isFinite(v))
      .map(([i, v]) => `${x(i).toFixed(1)},${y(Math.log10(v)).toFixed(1)}`);
    if (points.length) chart.append(svg("path", { d: `M${points.join("L")}`, class: `line ${tone(s)}` }));
  });
  chart.append(xLabel(x(1), "1"), xLabel(x(longest), String(longest)));
  chart.append(legend(series.map((one) => one.name)), axisTitle(xTitle));
  return chart;
}
