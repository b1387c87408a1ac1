// The notifier's WebSocket, with polling as the fallback while it is down.
//
// Protocol (DESIGN.md "Live updates"): the client sends {"subscribe": filters, "resume_from": seq};
// the server sends {"type": "execution_*", "seq": N, "execution": summary}, pings, and
// {"type": "resync_required"} when the missed events are past retention, and
// {"type": "feed_status", "live": false|true} when the notifier lost / got back its event stream
// (the socket stays open but carries nothing meanwhile, so the page polls as if it had dropped).

import { api, getToken } from "./api.js";

export const POLL_MS = 10_000;
const MIN_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 10_000;
// A connection resets the backoff only once it has stayed open this long, not when it opens: a
// notifier that accepts and then closes at once (overloaded, or refusing after the handshake)
// would otherwise be retried at the minimum delay forever. Not on a first message either: the
// notifier's pings are WebSocket control frames the page never sees, a quiet org may get no
// event for minutes, and a refusal can itself arrive as a frame before the close.
export const HEALTHY_MS = 5000;
/**
 * The least wait after the notifier refused the socket for a limit it did not put a time on
 * (4429 "more than N connections for this caller": other tabs hold the sockets; 1013 "notifier
 * at its connection limit"): retrying sooner would only be refused again, by every tab at once.
 */
export const LIMIT_MIN_MS = 30_000;

/**
 * How long to stay away after a close, in ms, when the notifier refused for a limit; else null.
 * A reason naming its wait ("retry after N s") is taken at its word, never less than 1 s.
 */
export function limitWait(code, reason = "") {
  const named = /retry after (\d+(?:\.\d+)?) ?s/i.exec(reason ?? "");
  if (code === 4429) return named ? Math.max(1000, Number(named[1]) * 1000) : LIMIT_MIN_MS;
  if (code === 1013 && /connection limit/i.test(reason ?? "")) return named ? Math.max(1000, Number(named[1]) * 1000) : LIMIT_MIN_MS;
  return null;
}

/** What the indicator says about a limit close (its title; the label says "polling"). */
export function limitNote(code, reason, waitMs) {
  const seconds = Math.ceil(waitMs / 1000);
  if (code === 4429 && /failed authentication/i.test(reason ?? "")) {
    return `The live feed refused this address after too many failed sign-ins; refreshing every 10 seconds, live again in ${seconds} s at the earliest`;
  }
  if (code === 4429) return `You have too many live connections open (other tabs?); refreshing every 10 seconds, trying again in ${seconds} s`;
  return `The live feed is at its connection limit; refreshing every 10 seconds, trying again in ${seconds} s`;
}

/**
 * The wait before the next attempt: "equal jitter", half the backoff plus a random share of the
 * other half. Dashboards dropped together (a notifier restart) spread out instead of coming back
 * in lockstep, yet none retries at once (full jitter could wait ~0 ms).
 */
export function reconnectDelay(backoff, random = Math.random) {
  return backoff / 2 + random() * (backoff / 2);
}

/**
 * Where the notifier listens: /api/config, the meta tag, else :8001 on the page's host.
 *
 * Never from the page's URL or anything a link can set: the socket carries the user's token,
 * so a crafted link naming another host would hand the token to it.
 */
export async function notifierUrl() {
  // What an earlier version remembered from a page URL's ?notifier= is not to be trusted.
  localStorage.removeItem("fleetwatch.notifier");
  try {
    const config = await api("/api/config");
    if (config?.notifier_url) return config.notifier_url;
  } catch {
    // No config endpoint: fall through to the page's own defaults.
  }
  const meta = document.querySelector('meta[name="fleetwatch-notifier"]')?.content;
  if (meta) return meta;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname}:8001/ws`;
}

export class LiveFeed {
  /**
   * onEvent(message) for each execution event, onPoll() every POLL_MS while the socket is down,
   * onResync() when the server cannot replay, onState(state) with "connecting" | "live" | "polling",
   * onCatchUp() once a connection that did not resume is live (see receive).
   */
  constructor({ onEvent, onPoll, onResync, onState, onCatchUp }) {
    Object.assign(this, { onEvent, onPoll, onResync, onState, onCatchUp });
    this.socket = null;
    this.lastSeq = null;
    /** Whether the current connection asked to resume from `lastSeq`. */
    this.resuming = false;
    this.filters = {};
    this.backoff = MIN_BACKOFF_MS;
    this.pollTimer = null;
    this.retryTimer = null;
    this.stopped = false;
    this.state = null;
    /** Why the feed is not live, when the notifier said (a limit), for the indicator's title. */
    this.note = null;
  }

  async start(filters) {
    this.filters = filters;
    this.url = await notifierUrl();
    this.connect();
  }

  setFilters(filters) {
    this.filters = filters;
    this.send();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.pollTimer);
    this.socket?.close();
  }

  setState(state, note = null) {
    if (this.state === state && this.note === note) return;
    this.state = state;
    this.note = note;
    this.onState?.(state, note);
  }

  connect() {
    if (this.stopped) return;
    const token = getToken();
    let socket;
    try {
      // The subprotocol pair keeps the token out of URLs (and so out of access logs).
      // Resume through the URL: the notifier honours `resume_from` in the first frame only if
      // it arrives within a short window, which a busy page or network can miss.
      const url = new URL(this.url, window.location.href);
      if (this.lastSeq !== null) url.searchParams.set("resume_from", String(this.lastSeq));
      this.resuming = this.lastSeq !== null;
      socket = token ? new WebSocket(url, ["bearer", token]) : new WebSocket(url);
    } catch {
      this.dropped();
      return;
    }
    this.socket = socket;
    if (this.state !== "polling") this.setState("connecting");
    let openedAt = null;
    socket.addEventListener("open", () => {
      openedAt = performance.now();
      this.send();
      // Not live yet: the notifier delivers events only once it has looked up the caller's
      // access and handed over from any replay, and says so with `ready`. An event published
      // between the socket opening and then was never shown, though the page said "live".
    });
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", (event) => {
      // Only a connection that proved healthy earns quick retries again (see HEALTHY_MS).
      if (openedAt !== null && performance.now() - openedAt >= HEALTHY_MS) {
        this.backoff = MIN_BACKOFF_MS;
      }
      // 4401: the notifier refused the token; the API will say so too, so retry only slowly.
      // 4429 / 1013 at a connection limit: a quick retry would be refused too; wait at least
      // what the reason names (see limitWait), and from then on only slowly.
      const wait = limitWait(event.code, event.reason);
      if (event.code === 4401 || wait !== null) this.backoff = MAX_BACKOFF_MS;
      if (this.socket === socket) this.dropped(wait === null ? null : { wait, note: limitNote(event.code, event.reason, wait) });
    });
  }

  send() {
    if (this.socket?.readyState !== WebSocket.OPEN) return;
    // Only the agent narrows the feed on the server: a status or trigger filter there would also
    // hold back the events that move a shown row on (a completion has another status and often
    // no trigger). The page matches new rows against its other filters itself.
    const subscribe = {};
    if (this.filters.agent_name) subscribe.agent_name = this.filters.agent_name.split(",");
    const message = { subscribe };
    this.socket.send(JSON.stringify(message));
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (typeof message.seq === "number") {
      this.lastSeq = Math.max(this.lastSeq ?? 0, message.seq);
    }
    if (message.type === "ready") {
      // Without a seq to resume from (the page's first connection), what happened between the
      // page's last read and now was sent to nobody: read once more (a failure missed there
      // left its row "running" for good). A resumed connection had it replayed.
      const catchUp = !this.resuming && this.state !== "live";
      this.goLive();
      if (catchUp) this.onCatchUp?.();
    } else if (message.type === "resync_required") {
      this.lastSeq = typeof message.seq === "number" ? message.seq : null;
      this.onResync?.();
    } else if (message.type === "feed_status") {
      // Events missed meanwhile come from the notifier itself, around the restored status.
      if (message.live === false) this.startPolling();
      else if (message.live === true && this.state === "polling") this.goLive();
    } else if (message.type === "error") {
      console.warn("notifier refused a frame:", message.error, message.detail);
    } else if (message.execution) {
      this.onEvent?.(message);
    }
  }

  goLive() {
    clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.setState("live");
  }

  /** Poll now (unless already polling) and every POLL_MS: the socket is gone or carries nothing. */
  startPolling(note = null) {
    if (this.stopped) return;
    const was = this.state;
    this.setState("polling", note);
    if (was !== "polling") this.onPoll?.();
    if (!this.pollTimer) this.pollTimer = setInterval(() => this.onPoll?.(), POLL_MS);
  }

  /**
   * The socket is gone: poll, and try the socket again with backoff. `limit`: the notifier
   * refused for a limit ({wait, note}): the next attempt comes no sooner than `wait` (plus up
   * to a quarter more at random, so tabs refused together do not come back together).
   */
  dropped(limit = null) {
    this.socket = null;
    if (this.stopped) return;
    this.startPolling(limit?.note ?? null);
    clearTimeout(this.retryTimer);
    const delay = limit ? limit.wait + Math.random() * (limit.wait / 4) : reconnectDelay(this.backoff);
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
  }
}
