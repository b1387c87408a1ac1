// Entry point: sign-in, the router (query parameters pick the view) and the live feed.

import { adoptTokenFromHash, api, currentLimit, getToken, limitMessage, setToken, tokenClaims } from "./api.js";
import { renderCompare, renderDetail } from "./detail.js";
import { clear, h, toast } from "./dom.js";
import { ExecutionsPage } from "./executions.js";
import { agentLabel, setAgentNames } from "./format.js";
import { heard, readsBehind } from "./lag.js";
import { LiveFeed } from "./live.js";
import { refreshTimes } from "./rows.js";

const root = document.getElementById("app");
const indicator = document.getElementById("live");
let page = null;
let detailId = null;
/** The two executions the compare view shows, else null. */
let compareIds = null;
let agents = [];
let live = null;

const LIVE_LABELS = { live: "live", polling: "polling every 10 s", connecting: "connecting…", off: "offline" };

function setLiveState(state, note = null) {
  indicator.hidden = state === "off";
  indicator.dataset.state = state;
  indicator.querySelector(".label").textContent = LIVE_LABELS[state] ?? state;
  indicator.title = note ?? (state === "live" ? "Live: updates arrive as they happen" : state === "polling" ? "The live feed is down: refreshing every 10 seconds" : "Live updates");
}

// The API answered 429: say why above whatever is shown (which stays), count down the wait the
// server asked for (nothing is sent meanwhile, see api.js), then let the page try again.
const banner = document.getElementById("limit");
let bannerTimer = null;

function showLimit() {
  clearTimeout(bannerTimer);
  bannerTimer = null;
  const limit = currentLimit();
  if (!limit) {
    banner.hidden = true;
    clear(banner);
    // A list that failed for the limit loads again now that the wait is over.
    if (page?.failed && !page.closed) page.reload();
    return;
  }
  const seconds = (limit.until - Date.now()) / 1000;
  banner.dataset.kind = limit.kind;
  clear(banner).append(
    h("span", { class: "limit-text" }, limitMessage(limit.kind, seconds)),
    limit.kind === "auth"
      ? h("button", { class: "btn", type: "button", onclick: () => {
          setToken(null);
          signIn("Sign in with a new token: the last one was refused.");
        } }, "Sign in again")
      : null,
  );
  banner.hidden = false;
  bannerTimer = setTimeout(showLimit, Math.min(1000, Math.max(0, limit.until - Date.now())));
}

function hideLimit() {
  clearTimeout(bannerTimer);
  bannerTimer = null;
  banner.hidden = true;
  clear(banner);
}

export function navigate(url, { replace = false } = {}) {
  history[replace ? "replaceState" : "pushState"](null, "", url);
  route();
}

function signIn(message) {
  // Whatever a view was still loading must not paint over the form (a 401 brings us here
  // from the middle of it).
  leaveView();
  live?.stop();
  live = null;
  hideLimit();
  setLiveState("off");
  document.getElementById("whoami").textContent = "";
  document.getElementById("signout").hidden = true;
  const input = h("textarea", { name: "token", rows: 4, required: true, placeholder: "eyJhbGciOi…", autocomplete: "off", spellcheck: "false" });
  clear(root).append(
    h(
      "form",
      {
        class: "signin panel",
        onsubmit: (e) => {
          e.preventDefault();
          setToken(input.value.trim());
          start();
        },
      },
      h("h1", {}, "Sign in"),
      message ? h("p", { class: "error-box", role: "alert" }, message) : null,
      h("label", {}, h("span", {}, "Access token"), input),
      h("p", { class: "muted small" }, "Paste a token from your administrator, or run ", h("code", {}, "fleetwatch token --org ORG --user YOU --role user"), "."),
      h("button", { class: "btn btn-primary", type: "submit" }, "Sign in"),
    ),
  );
}

let routeSeq = 0;
/**
 * Bumped by every render of a detail or compare view: on a slow network a refresh sent earlier
 * may answer after a later one, and its older execution (still "running", with a Stop button)
 * must not paint over the newer.
 */
let renderSeq = 0;

/** The view shown is done with: what it still loads or schedules is for nobody. */
function leaveView() {
  routeSeq += 1;
  page?.close();
  page = null;
  detailId = null;
  compareIds = null;
  clearTimeout(detailRefresh);
  detailRefresh = null;
  feedSaid.clear();
  lagRetries = 0;
}

/**
 * Show the view the URL names. `remembered`: a bare `/` takes the last filters from
 * localStorage; going back through history (popstate) it does not (see readFilters).
 */
async function route({ remembered = true } = {}) {
  const params = new URLSearchParams(location.search);
  leaveView();
  const seq = routeSeq;
  const render = ++renderSeq;
  const current = () => seq === routeSeq && render === renderSeq;
  if (params.get("execution")) {
    detailId = params.get("execution");
    document.title = `${detailId} · fleetwatch`;
    // The live feed follows what is shown: a list's agent filter would hold back this
    // execution's events when it belongs to another agent (a child run, say).
    live?.setFilters({});
    await renderDetail(root, detailId, { navigate, current, canStop: canStop() });
  } else if (params.get("compare")) {
    document.title = "Compare · fleetwatch";
    live?.setFilters({});
    const ids = params.get("compare").split(",").filter(Boolean).slice(0, 2);
    if (ids.length === 2) compareIds = ids;
    await renderCompare(root, ids, { current });
  } else {
    document.title = "Executions · fleetwatch";
    page = new ExecutionsPage(root, { agents, navigate, role: tokenClaims()?.role, remembered });
    page.onFiltersChanged = (filters) => live?.setFilters(filters);
    page.mount();
    live?.setFilters(page.filters);
  }
}

/** Clients may not terminate executions (the API answers them 403): no Stop for them. */
function canStop() {
  return tokenClaims()?.role !== "client";
}

// A burst of events for the executions shown (their steps, often) is one refresh, not one each.
const DETAIL_REFRESH_MS = 400;
// A read with less than the live feed said (the database lags the feed, see lag.js), or one
// that failed after an event, is read again after 0.8, 1.6, 3.2, 6.4 and 12.8 s; past that,
// what the feed said is dropped, and the next event or a reload tries again.
const LAG_RETRIES = 5;
let detailRefresh = null;
let detailRefreshIsRetry = false;
let redrawNext = false;
let lagRetries = 0;
/**
 * What the live feed said of the executions shown: id -> agent -> lag.js `heard`. By agent: an
 * execution is its first agent's, and ingest refuses another agent's events for it (the feed
 * still carries them), so only its own agent's events are waited for.
 */
const feedSaid = new Map();
const saidOf = (exec) => feedSaid.get(exec.id)?.get(exec.agent_name ?? null);

/**
 * Read the executions shown again soon. `redraw`: draw them even when nothing changed (polling:
 * a running execution's waterfall runs up to now).
 */
function refreshShownSoon({ retry = false, redraw = false } = {}) {
  redrawNext ||= redraw;
  if (detailRefresh !== null) {
    if (retry || !detailRefreshIsRetry) return;
    clearTimeout(detailRefresh); // news: read it now rather than at the retry's later time
  }
  const seq = routeSeq;
  detailRefreshIsRetry = retry;
  detailRefresh = setTimeout(async () => {
    detailRefresh = null;
    if (seq !== routeSeq) return;
    const render = ++renderSeq;
    const current = () => seq === routeSeq && render === renderSeq;
    const options = { current, refresh: true, redraw: redrawNext };
    redrawNext = false;
    const shown = detailId ? [detailId] : (compareIds ?? []);
    let read = null; // null: the read failed (the page shown stays)
    if (detailId) {
      const exec = await renderDetail(root, detailId, { ...options, navigate, canStop: canStop() });
      read = exec && [exec];
    } else if (compareIds) read = await renderCompare(root, compareIds, options);
    // A later refresh (or view) took over, or an event queued one: that one judges its own read.
    if (!current() || detailRefresh !== null) return;
    const behind = read === null ? shown.some((id) => feedSaid.has(id)) : read.some((exec) => readsBehind(saidOf(exec), exec));
    if (behind && lagRetries < LAG_RETRIES) {
      lagRetries += 1;
      refreshShownSoon({ retry: true });
      return;
    }
    lagRetries = 0;
    if (behind) for (const id of shown) feedSaid.delete(id);
  }, retry ? DETAIL_REFRESH_MS * 2 ** lagRetries : DETAIL_REFRESH_MS);
}

function onLiveEvent(message) {
  const id = message.execution.id;
  if (page) page.onLive(message);
  else if (id === detailId || compareIds?.includes(id)) {
    const agent = message.execution.agent_name ?? null;
    if (!feedSaid.has(id)) feedSaid.set(id, new Map());
    feedSaid.get(id).set(agent, heard(feedSaid.get(id).get(agent), message));
    lagRetries = 0;
    refreshShownSoon();
  }
  else if (message.execution.status === "failed") toast(`${agentLabel(message.execution)} failed`, "error");
}

async function start() {
  const claims = tokenClaims();
  if (!getToken() || !claims) {
    signIn(getToken() ? "That token could not be read." : null);
    return;
  }
  document.getElementById("whoami").textContent = `${claims.sub} · ${claims.role} · ${claims.org}`;
  document.getElementById("signout").hidden = false;
  try {
    const answer = await api("/api/agents");
    agents = (Array.isArray(answer) ? answer : (answer?.agents ?? [])).map((a) => (typeof a === "string" ? { name: a } : a));
    agents.sort((a, b) => a.name.localeCompare(b.name));
    setAgentNames(agents);
  } catch (err) {
    if (err.status === 401) return; // the unauthorized handler shows the sign-in form
    agents = [];
  }
  await route();
  if (!live) {
    live = new LiveFeed({
      onEvent: onLiveEvent,
      // The indicator says "polling" on every view: a detail or compare page re-reads too.
      onPoll: () => (page ? page.poll() : refreshShownSoon({ redraw: true })),
      onResync: () => (page ? page.reload() : refreshShownSoon()),
      onCatchUp: () => (page ? page.poll() : refreshShownSoon()),
      onState: setLiveState,
    });
    live.start(page?.filters ?? {});
  }
}

window.addEventListener("fleetwatch:limited", (event) => (event.detail ? showLimit() : hideLimit()));
window.addEventListener("fleetwatch:unauthorized", () => {
  setToken(null);
  signIn("Your session has expired or the token is invalid. Please sign in again.");
});
window.addEventListener("popstate", () => getToken() && route({ remembered: false }));
// A `#token=` link opened in this tab changes only the fragment (no reload): take the token,
// drop it from the address bar, and start again as whoever it names.
window.addEventListener("hashchange", () => {
  if (!location.hash.startsWith("#token=")) return;
  adoptTokenFromHash();
  live?.stop();
  live = null;
  start();
});
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-nav]");
  if (!link || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
document.getElementById("signout").addEventListener("click", () => {
  setToken(null);
  signIn(null);
});
setInterval(() => refreshTimes(), 30_000);

adoptTokenFromHash();
start();
