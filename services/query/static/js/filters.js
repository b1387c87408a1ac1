// Filters live in the URL (shareable) and in localStorage (sticky); the URL wins.

import { TRIGGERS } from "./format.js";

const STORE_KEY = "fleetwatch.filters";

/** The page speaks the API's own filter names; `hours` is the stats endpoint's window. */
export const FILTER_KEYS = ["agent_name", "status", "triggered_by", "hours", "search"];
/**
 * The list API's filters the form has no field for. A shared link may carry them: they are
 * kept in the URL, sent to the API and shown above the list, never dropped silently.
 */
export const LINK_KEYS = ["project", "workflow", "start_time", "end_time"];
const ALL_KEYS = [...FILTER_KEYS, ...LINK_KEYS];
/**
 * List filters: repeated (`status=failed&status=running`) or comma-separated. The API splits
 * commas for these three only, so they are kept as one comma-separated string (a select shows it).
 */
const COMMA_KEYS = new Set(["agent_name", "status", "triggered_by"]);
/**
 * Project and workflow names may hold commas, which the API does not split: these are kept as
 * arrays of values and sent as repeated parameters (`project=a&project=b`).
 */
const REPEATED_KEYS = new Set(["project", "workflow"]);
export const RANGES = [
  ["", "All time"],
  ["1", "Last hour"],
  ["6", "Last 6 hours"],
  ["24", "Last 24 hours"],
  ["72", "Last 3 days"],
  ["168", "Last 7 days"],
];

/** A filter's values as a list: an array as it is, a string split on commas where the API does. */
function valuesOf(key, value) {
  if (Array.isArray(value)) return value;
  if (value === undefined || value === null || value === "") return [];
  return COMMA_KEYS.has(key) ? String(value).split(",") : [String(value)];
}

/** Is a filter set (a non-empty string, or a non-empty list)? */
export function isSet(value) {
  return Array.isArray(value) ? value.length > 0 : Boolean(value);
}

/** A time range is a positive number of hours; anything else (`hours=abc`) is no range. */
function validHours(value) {
  const hours = Number(value);
  return Number.isFinite(hours) && hours > 0;
}

/**
 * The filters of the address bar, else (with `remembered`) the last ones kept in localStorage.
 * Going back through history must not remember: a bare `/` left in the history is a view that
 * had no filters, and restoring them there would make a filter impossible to undo with Back.
 */
export function readFilters({ remembered = true } = {}) {
  const params = new URLSearchParams(location.search);
  const fromUrl = {};
  for (const key of ALL_KEYS) {
    const values = params.getAll(key).filter(Boolean);
    if (!values.length) continue;
    if (REPEATED_KEYS.has(key)) fromUrl[key] = [...new Set(values)];
    else if (COMMA_KEYS.has(key)) fromUrl[key] = values.join(",");
    else if (key !== "hours" || validHours(values[0])) fromUrl[key] = values[0];
  }
  if (Object.keys(fromUrl).length || params.has("clear") || !remembered) return fromUrl;
  try {
    const stored = JSON.parse(localStorage.getItem(STORE_KEY) ?? "{}");
    const kept = FILTER_KEYS.filter((k) => stored[k] && (k !== "hours" || validHours(stored[k])));
    return Object.fromEntries(kept.map((k) => [k, String(stored[k])]));
  } catch {
    return {};
  }
}

/** Put the filters in the URL (replacing the entry unless push) and the form's in localStorage. */
export function writeFilters(filters, { push = false } = {}) {
  const params = new URLSearchParams(location.search);
  for (const key of ALL_KEYS) {
    if (Array.isArray(filters[key])) {
      params.delete(key);
      for (const value of filters[key]) params.append(key, value);
    } else if (filters[key]) {
      params.set(key, filters[key]);
    } else {
      params.delete(key);
    }
  }
  params.delete("clear");
  const query = params.toString();
  const url = location.pathname + (query ? `?${query}` : "");
  if (url !== location.pathname + location.search) {
    history[push ? "pushState" : "replaceState"](null, "", url);
  }
  // A link's extra filters stay with the link: a later bare visit should not inherit them.
  localStorage.setItem(STORE_KEY, JSON.stringify(Object.fromEntries(FILTER_KEYS.filter((k) => filters[k]).map((k) => [k, filters[k]]))));
}

export function hasFilters(filters) {
  return ALL_KEYS.some((k) => isSet(filters[k]));
}

/** The link's filters the form cannot show, as [name, value] pairs (one per value). */
export function linkFilters(filters) {
  return LINK_KEYS.flatMap((k) => valuesOf(k, filters[k]).map((v) => [k, v]));
}

/**
 * A time as the API reads it: ISO 8601, and without an offset in UTC (JavaScript would read
 * a date-time without one as local time). Null when JavaScript cannot read it.
 */
export function parseApiTime(text) {
  if (!text) return null;
  let value = String(text).trim();
  if (/^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/i.test(value)) value = `${value.replace(" ", "T")}Z`;
  const t = new Date(value);
  return Number.isNaN(t.getTime()) ? null : t;
}

/** The list endpoint's parameters for these filters (a time range becomes start_time). */
export function listParams(filters, now = Date.now()) {
  const params = {};
  for (const key of ALL_KEYS) {
    if (key !== "hours" && isSet(filters[key])) params[key] = filters[key];
  }
  if (validHours(filters.hours)) {
    const since = new Date(now - Number(filters.hours) * 3600_000);
    // Both a range and a link's start_time: the later start narrows more.
    const linked = parseApiTime(filters.start_time);
    if (!linked || linked < since) params.start_time = since.toISOString();
  }
  return params;
}

/** The longest window the stats and timeline endpoints take (`hours` 1..168, whole hours). */
const MAX_STATS_HOURS = 168;

/**
 * The stats window in hours: the chosen range, or the last 24 hours for "All time". A link's
 * range off the menu (`hours=500`, `hours=2.5`) becomes whole hours within the endpoints' bounds
 * (the cards then name the window they show), not a 422 that leaves the cards empty.
 */
export function statsHours(filters) {
  if (!validHours(filters.hours)) return 24;
  return Math.min(Math.ceil(Number(filters.hours)), MAX_STATS_HOURS);
}

/** Does a value the row carries fall outside a list filter ("other": any trigger not known)? */
function outside(key, value, wanted) {
  if (!isSet(wanted) || value === undefined || value === null) return false;
  const values = valuesOf(key, wanted);
  if (values.includes(value)) return false;
  return !(key === "triggered_by" && values.includes("other") && !TRIGGERS.includes(value));
}

/**
 * Does a row definitely fail the filters a live update can change or tell: its status and its
 * agent? A row shown that a live event moves out of them (a running row under `status=running`
 * completes) leaves the list.
 */
export function ruledOut(row, filters) {
  return outside("agent_name", row.agent_name, filters.agent_name) || outside("status", row.status, filters.status);
}

/** Text the notifier cut (at 200 characters) may hold a match past the cut. */
const TEXT_CUT = 200;

/**
 * Could a live execution summary belong in the list under these filters? A summary carries only
 * what its event knew (a completion often omits its trigger, project and message; text is cut
 * at 200 characters), so what it does not say counts as a match: only what it does say can rule
 * it out. The poll that follows every event brings the API's own answer, which is never
 * filtered again here, and takes out a row the API does not list.
 */
export function matches(exec, filters, now = Date.now()) {
  for (const key of [...COMMA_KEYS, ...REPEATED_KEYS]) {
    if (outside(key, exec[key], filters[key])) return false;
  }
  if (filters.search) {
    // As the API: a case-insensitive substring of message or response. Ruled out only when
    // both are there in full and neither holds it.
    const needle = filters.search.trim().toLowerCase();
    const texts = [exec.message, exec.response];
    const whole = texts.every((t) => typeof t === "string" && t.length < TEXT_CUT);
    if (whole && !texts.some((t) => t.toLowerCase().includes(needle))) return false;
  }
  // The API filters on started_at (else when first seen, which a summary does not carry).
  const started = parseApiTime(exec.started_at)?.getTime() ?? null;
  if (started === null) return true;
  if (validHours(filters.hours) && started < now - Number(filters.hours) * 3600_000) return false;
  const from = parseApiTime(filters.start_time)?.getTime();
  const until = parseApiTime(filters.end_time)?.getTime();
  if (from !== undefined && started < from) return false;
  if (until !== undefined && started >= until) return false;
  return true;
}
