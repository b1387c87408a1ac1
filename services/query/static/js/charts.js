// Stat cards and the timeline chart (inline SVG, no library).

import { h, s } from "./dom.js";
import * as fmt from "./format.js";

const STATUS_ORDER = ["success", "failed", "cancelled", "running", "pending"];

function windowLabel(hours) {
  if (hours % 24 === 0 && hours >= 48) return `last ${hours / 24} days`;
  return hours === 1 ? "last hour" : `last ${hours} h`;
}

function card(key, label, value, sub) {
  return h(
    "div",
    { class: `card card-${key}`, dataset: { stat: key } },
    h("div", { class: "card-label" }, label),
    h("div", { class: "card-value" }, value),
    h("div", { class: "card-sub" }, sub),
  );
}

// The API's success / finished; null (nothing finished yet) is no rate at all, not 0%.
function rate(stats) {
  if (typeof stats.success_rate === "number") return `${(100 * stats.success_rate).toFixed(1)}%`;
  return "—";
}

/** The four stat cards: total, success rate, failed, cost. */
export function statCards(stats, hours) {
  const total = stats.total ?? 0;
  const successful = stats.successful ?? 0;
  const failed = stats.failed ?? 0;
  const running = stats.running ?? 0;
  return [
    card("total", "Executions", fmt.count(total), windowLabel(hours)),
    card("success", "Success rate", rate(stats), `${fmt.count(successful)} succeeded`),
    card("failed", "Failed", fmt.count(failed), `${fmt.count(running)} running now`),
    card("cost", "Cost", fmt.cost(stats.total_cost ?? 0), `avg ${fmt.duration(stats.avg_duration_ms)}`),
  ];
}

export function statCardsLoading() {
  return ["total", "success", "failed", "cost"].map((k) => card(k, "…", h("span", { class: "skeleton" }, "\u00a0"), "\u00a0"));
}

/** One bucket of the timeline as {time, counts: {status: n}, cost}, whatever its exact shape. */
export function normalizeBucket(b) {
  const time = b.bucket ?? b.bucket_start ?? b.start ?? b.time ?? b.t;
  const raw = b.by_status ?? b.counts ?? b.statuses ?? b;
  const counts = {};
  for (const status of STATUS_ORDER) counts[status] = Number(raw[status] ?? 0);
  if (b.successful !== undefined && !raw.success) counts.success = Number(b.successful);
  return { time, counts, cost: Number(b.cost ?? b.total_cost ?? 0) };
}

export function timelineBuckets(data) {
  const list = Array.isArray(data) ? data : (data?.buckets ?? data?.timeline ?? []);
  return list.map(normalizeBucket).filter((b) => b.time);
}

/** Stacked bars of executions by status per bucket, with cost as a line on its own scale. */
export function timelineChart(buckets, { bucket = "hour", width = 720 } = {}) {
  const height = 180;
  const pad = { top: 12, right: 48, bottom: 22, left: 36 };
  const innerW = width - pad.left - pad.right;
  const innerH = height - pad.top - pad.bottom;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": `Executions per ${bucket} by status, and cost`,
  });
  // The API fills the window with empty buckets: a fleet with nothing in it is no chart either.
  const total = buckets.reduce((sum, b) => sum + STATUS_ORDER.reduce((n, k) => n + b.counts[k], 0), 0);
  if (!total) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, "No executions in this window"));
    return svg;
  }
  const totals = buckets.map((b) => STATUS_ORDER.reduce((sum, k) => sum + b.counts[k], 0));
  const maxCount = Math.max(1, ...totals);
  const maxCost = Math.max(0, ...buckets.map((b) => b.cost));
  const step = innerW / buckets.length;
  const barW = Math.max(2, step * 0.7);
  const y = (n) => pad.top + innerH - (n / maxCount) * innerH;

  for (const tick of [0, Math.ceil(maxCount / 2), maxCount]) {
    svg.append(
      s("line", { x1: pad.left, x2: pad.left + innerW, y1: y(tick), y2: y(tick), class: "grid" }),
      s("text", { x: pad.left - 6, y: y(tick) + 4, "text-anchor": "end", class: "axis" }, String(tick)),
    );
  }
  // Day buckets start at midnight UTC (the API's date_trunc): a day is named in UTC, or west of
  // Greenwich every bar would carry the day before.
  buckets.forEach((b, i) => {
    const x = pad.left + i * step + (step - barW) / 2;
    let base = 0;
    const when = new Date(b.time);
    const label = bucket === "day" ? when.toLocaleDateString([], { timeZone: "UTC" }) : when.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    for (const status of STATUS_ORDER) {
      const n = b.counts[status];
      if (!n) continue;
      const rect = s("rect", {
        x,
        y: y(base + n),
        width: barW,
        height: Math.max(1, y(base) - y(base + n)),
        class: `bar bar-${status}`,
      });
      rect.append(s("title", {}, `${label}: ${n} ${status}`));
      svg.append(rect);
      base += n;
    }
  });
  if (maxCost > 0) {
    const cy = (c) => pad.top + innerH - (c / maxCost) * innerH;
    const points = buckets.map((b, i) => `${pad.left + i * step + step / 2},${cy(b.cost)}`).join(" ");
    svg.append(
      s("polyline", { points, class: "cost-line" }),
      s("text", { x: pad.left + innerW + 6, y: cy(maxCost) + 4, class: "axis cost-axis" }, fmt.cost(maxCost)),
    );
  }
  const labelEvery = Math.ceil(buckets.length / 6);
  buckets.forEach((b, i) => {
    if (i % labelEvery) return;
    const when = new Date(b.time);
    const text = bucket === "day" ? when.toLocaleDateString([], { month: "short", day: "numeric", timeZone: "UTC" }) : when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    svg.append(s("text", { x: pad.left + i * step + step / 2, y: height - 6, "text-anchor": "middle", class: "axis" }, text));
  });
  return svg;
}

export function chartLegend() {
  return h(
    "div",
    { class: "legend" },
    STATUS_ORDER.map((k) => h("span", { class: `legend-item legend-${k}` }, h("i", {}), k)),
    h("span", { class: "legend-item legend-cost" }, h("i", {}), "cost"),
  );
}
