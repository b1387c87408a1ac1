// Filters live in the URL (shareable) and in localStorage (sticky); the URL wins.

const STORE_KEY = "fleetwatch.filters";

/** The page speaks the API's own filter names; `hours` is the stats endpoint's window. */
export const FILTER_KEYS = ["agent_name", "status", "triggered_by", "hours", "search"];
/**
 * The list API's filters the form has no field for. A shared link may carry them: they are
 * kept in the URL, sent to the API and shown above the list, never dropped silently.
 */
export const LINK_KEYS = ["project", "workflow", "start_time", "end_time"];
const ALL_KEYS = [...FILTER_KEYS, ...LINK_KEYS];
/** List filters: repeated (`status=failed&status=running`) or comma-separated, as in the API. */
const LIST_KEYS = new Set(["agent_name", "status", "triggered_by", "project", "workflow"]);
export const RANGES = [
  ["", "All time"],
  ["1", "Last hour"],
  ["6", "Last 6 hours"],
  ["24", "Last 24 hours"],
  ["72", "Last 3 days"],
  ["168", "Last 7 days"],
];

export function readFilters() {
  const params = new URLSearchParams(location.search);
  const fromUrl = {};
  for (const key of ALL_KEYS) {
    const values = params.getAll(key).filter(Boolean);
    if (values.length) fromUrl[key] = LIST_KEYS.has(key) ? values.join(",") : values[0];
  }
  if (Object.keys(fromUrl).length || params.has("clear")) return fromUrl;
  try {
    const stored = JSON.parse(localStorage.getItem(STORE_KEY) ?? "{}");
    return Object.fromEntries(FILTER_KEYS.filter((k) => stored[k]).map((k) => [k, String(stored[k])]));
  } catch {
    return {};
  }
}

/** Put the filters in the URL (replacing the entry unless push) and the form's in localStorage. */
export function writeFilters(filters, { push = false } = {}) {
  const params = new URLSearchParams(location.search);
  for (const key of ALL_KEYS) {
    if (filters[key]) params.set(key, filters[key]);
    else params.delete(key);
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
  return ALL_KEYS.some((k) => filters[k]);
}

/** The link's filters the form cannot show, as [name, value] pairs. */
export function linkFilters(filters) {
  return LINK_KEYS.filter((k) => filters[k]).map((k) => [k, filters[k]]);
}

/** The list endpoint's parameters for these filters (a time range becomes start_time). */
export function listParams(filters, now = Date.now()) {
  const params = {};
  for (const key of ALL_KEYS) {
    if (key !== "hours" && filters[key]) params[key] = filters[key];
  }
  if (filters.hours) {
    const since = new Date(now - Number(filters.hours) * 3600_000);
    // Both a range and a link's start_time: the later start narrows more.
    const linked = filters.start_time ? new Date(filters.start_time) : null;
    if (!linked || Number.isNaN(linked.getTime()) || linked < since) params.start_time = since.toISOString();
  }
  return params;
}

/** The stats window in hours: the chosen range, or the last 24 hours for "All time". */
export function statsHours(filters) {
  return Number(filters.hours) || 24;
}

/** Is `value` one of a list filter's comma-separated values (no filter: anything is)? */
function oneOf(value, wanted) {
  return !wanted || (value !== undefined && value !== null && wanted.split(",").includes(value));
}

/**
 * Does a live execution summary belong in the list under these filters? What a summary does
 * not say (a completion often omits its trigger and project) does not match:
 * the next poll brings such a row, with the API's full filtering.
 */
export function matches(exec, filters, now = Date.now()) {
  for (const key of LIST_KEYS) {
    if (!oneOf(exec[key], filters[key])) return false;
  }
  if (filters.search) {
    const needle = filters.search.toLowerCase();
    const hay = `${exec.message ?? ""} ${exec.response ?? ""}`.toLowerCase();
    if (!hay.includes(needle)) return false;
  }
  const started = exec.started_at ? new Date(exec.started_at).getTime() : null;
  if (filters.hours && started !== null && started < now - Number(filters.hours) * 3600_000) return false;
  if (filters.start_time && (started === null || started < new Date(filters.start_time).getTime())) return false;
  if (filters.end_time && (started === null || started > new Date(filters.end_time).getTime())) return false;
  return true;
}
