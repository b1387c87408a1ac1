// The public HTTP API, called with the signed-in token; nothing else talks to the server.

const TOKEN_KEY = "fleetwatch.token";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
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
  const detail = body?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => `${(d.loc ?? []).slice(-1)[0] ?? "request"}: ${d.msg}`).join("; ");
  }
  if (status === 401) return "Your session has expired or the token is invalid.";
  if (status === 403) return "You may not see this.";
  if (status === 404) return "Not found.";
  if (status === 429) return "Too many requests; try again shortly.";
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
  if (!response.ok) {
    const error = new ApiError(response.status, describe(response.status, data), data);
    if (response.status === 401) window.dispatchEvent(new CustomEvent("fleetwatch:unauthorized"));
    throw error;
  }
  return data;
}
