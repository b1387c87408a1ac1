// The public HTTP API, called with the signed-in token; nothing else talks to the server.

const TOKEN_KEY = "fleetwatch.token";

export class ApiError extends Error {
  constructor(status, message, body, { retryAfter = null, limit = null } = {}) {
    super(message);
    this.status = status;
    this.body = body;
    /** On a 429: the seconds the server asked to wait, and "auth" or "rate" (see limitKind). */
    this.retryAfter = retryAfter;
    this.limit = limit;
  }
}

/** A 429 without a (readable) Retry-After still waits this long before the next request. */
export const DEFAULT_RETRY_AFTER_S = 10;

/**
 * After a 429 the page sends nothing to the API until the server's Retry-After has passed:
 * polls, stats, "Load more" and Retry meanwhile fail at once with the same message instead of
 * spending more of the caller's (or the address's) budget. A new token (setToken) lifts it.
 */
let blockedUntil = 0;
let blockedKind = null;

/** Retry-After in seconds (a number of seconds or an HTTP date), else null. */
export function retryAfterSeconds(value, now = Date.now()) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text);
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - now) / 1000));
}

/**
 * "auth": the address used up its failed-authentication budget (the token sent was refused,
 * so it is most likely wrong or expired); "rate": this caller sent too many requests.
 */
export function limitKind(body) {
  const detail = typeof body?.detail === "string" ? body.detail : typeof body === "string" ? body : "";
  return /failed authentication/i.test(detail) ? "auth" : "rate";
}

/** What the page says about a 429 of `kind`, to be retried in `seconds`. */
export function limitMessage(kind, seconds) {
  const wait = `${Math.max(1, Math.ceil(seconds))} s`;
  if (kind === "auth") {
    return `Too many failed sign-ins from this address: the server refused this token, which is most likely wrong or expired. Sign in again with a new token (new attempts are accepted in ${wait}).`;
  }
  return `Too many requests: the server rate limited this page. It waits ${wait} before asking again; what is shown may be out of date.`;
}

/** The API limit in force now, else null: {kind, until} (until in Date.now() time). */
export function currentLimit(now = Date.now()) {
  return now < blockedUntil ? { kind: blockedKind, until: blockedUntil } : null;
}

function limited(kind, seconds) {
  blockedUntil = Math.max(blockedUntil, Date.now() + seconds * 1000);
  blockedKind = kind;
  window.dispatchEvent(new CustomEvent("fleetwatch:limited", { detail: { kind, until: blockedUntil } }));
}

function liftLimit() {
  blockedUntil = 0;
  blockedKind = null;
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  // A new token (or none) is a new start: a limit earned by the old one is not its to keep.
  if (token !== localStorage.getItem(TOKEN_KEY)) liftLimit();
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

/** The claims of a JWT, read without verifying (the server verifies; this is for display). */
export function tokenClaims(token = getToken()) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

/** Take a token handed over as `/#token=<jwt>`, then drop it from the address bar. */
export function adoptTokenFromHash() {
  const match = location.hash.match(/^#token=(.+)$/);
  if (!match) return;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(history.state, "", location.pathname + location.search);
}

function describe(status, body) {
  if (status === 429) return limitMessage(limitKind(body), DEFAULT_RETRY_AFTER_S);
  const detail = body?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => `${(d.loc ?? []).slice(-1)[0] ?? "request"}: ${d.msg}`).join("; ");
  }
  if (status === 401) return "Your session has expired or the token is invalid.";
  if (status === 403) return "You may not see this.";
  if (status === 404) return "Not found.";
  return `The server answered ${status}.`;
}

/** fetch() against the API: JSON in and out, ApiError on any non-2xx answer. */
export async function api(path, { method = "GET", params = null, body = undefined, signal } = {}) {
  const url = new URL(path, location.origin);
  if (params) {
    // A list is sent as a repeated parameter (`project=a&project=b`), as the API takes it.
    for (const [key, value] of Object.entries(params)) {
      for (const one of Array.isArray(value) ? value : [value]) {
        if (one !== null && one !== undefined && one !== "") url.searchParams.append(key, one);
      }
    }
  }
  const limit = currentLimit();
  if (limit) {
    const seconds = (limit.until - Date.now()) / 1000;
    throw new ApiError(429, limitMessage(limit.kind, seconds), null, { retryAfter: Math.ceil(seconds), limit: limit.kind });
  }
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The server cannot be reached.", null);
  }
  const type = response.headers.get("Content-Type") ?? "";
  const data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (response.status === 429) {
    const kind = limitKind(data);
    const seconds = retryAfterSeconds(response.headers.get("Retry-After")) ?? DEFAULT_RETRY_AFTER_S;
    limited(kind, Math.max(1, seconds));
    throw new ApiError(429, limitMessage(kind, seconds), data, { retryAfter: seconds, limit: kind });
  }
  if (!response.ok) {
    const error = new ApiError(response.status, describe(response.status, data), data);
    if (response.status === 401) window.dispatchEvent(new CustomEvent("fleetwatch:unauthorized"));
    throw error;
  }
  if (blockedKind !== null && !currentLimit()) {
    liftLimit();
    window.dispatchEvent(new CustomEvent("fleetwatch:limited", { detail: null }));
  }
  return data;
}
