// Filters live in the URL (shareable) and in localStorage (sticky); the URL wins.

const STORE_KEY = "fleetwatch.filters";

/** The page speaks the API's own filter names; `hours` is the stats endpoint's window. */
export const FILTER_KEYS = ["agent_name", "status", "triggered_by", "hours", "search"];
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
  for (const key of FILTER_KEYS) {
    if (params.get(key)) fromUrl[key] = params.get(key);
  }
  if (Object.keys(fromUrl).length || params.has("clear")) return fromUrl;
  try {
    const stored = JSON.parse(localStorage.getItem(STORE_KEY) ?? "{}");
    return Object.fromEntries(FILTER_KEYS.filter((k) => stored[k]).map((k) => [k, String(stored[k])]));
  } catch {
    return {};
  }
}

/** Put the filters in the URL (replacing the entry unless push) and in localStorage. */
export function writeFilters(filters, { push = false } = {}) {
  const params = new URLSearchParams(location.search);
  for (const key of FILTER_KEYS) {
    if (filters[key]) params.set(key, filters[key]);
    else params.delete(key);
  }
  params.delete("clear");
  const query = params.toString();
  const url = location.pathname + (query ? `?${query}` : "");
  if (url !== location.pathname + location.search) {
    history[push ? "pushState" : "replaceState"](null, "", url);
  }
  localStorage.setItem(STORE_KEY, JSON.stringify(filters));
}

export function hasFilters(filters) {
  return FILTER_KEYS.some((k) => filters[k]);
}

/** The list endpoint's parameters for these filters (a time range becomes start_time). */
export function listParams(filters, now = Date.now()) {
  const params = {};
  for (const key of ["agent_name", "status", "triggered_by", "search"]) {
    if (filters[key]) params[key] = filters[key];
  }
  if (filters.hours) {
    params.start_time = new Date(now - Number(filters.hours) * 3600_000).toISOString();
  }
  return params;
}

/** The stats window in hours: the chosen range, or the last 24 hours for "All time". */
export function statsHours(filters) {
  return Number(filters.hours) || 24;
}

/** Does a live execution summary belong in the list under these filters? */
export function matches(exec, filters, now = Date.now()) {
  if (filters.agent_name && exec.agent_name !== filters.agent_name) return false;
  if (filters.status && exec.status !== filters.status) return false;
  if (filters.triggered_by && exec.triggered_by !== filters.triggered_by) return false;
  if (filters.search) {
    const needle = filters.search.toLowerCase();
    const hay = `${exec.message ?? ""} ${exec.response ?? ""}`.toLowerCase();
    if (!hay.includes(needle)) return false;
  }
  if (filters.hours && exec.started_at) {
    if (new Date(exec.started_at).getTime() < now - Number(filters.hours) * 3600_000) return false;
  }
  return true;
}
