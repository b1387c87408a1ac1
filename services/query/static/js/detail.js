// One execution in full (fields, log, component waterfall, children) and two side by side.

import { api } from "./api.js";
import { clear, h } from "./dom.js";
import * as fmt from "./format.js";
import { agentHref, executionHref, statusBadge, stopButton, timeCell } from "./rows.js";

const LONG_FIELDS = ["message", "response", "error"];
// Parts the page shows in their own places, and what the API says about them (not fields).
const PAGE_PARTS = ["components", "children", "children_truncated", "execution_log", "tool_calls", "versions", "log_url", "has_log", "engine_url", "retries"];
const HIDDEN_FIELDS = new Set([...PAGE_PARTS, ...LONG_FIELDS]);
const TIME_FIELDS = new Set(["started_at", "completed_at", "first_seen_at", "updated_at", "last_seen_at"]);

function pretty(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function fieldValue(key, value, exec) {
  if (value === null || value === undefined || value === "") return h("span", { class: "muted" }, "—");
  if (TIME_FIELDS.has(key)) return h("span", {}, timeCell(value), " ", h("span", { class: "muted small" }, fmt.parseTime(value)?.toISOString() ?? value));
  if (key === "duration_ms") return fmt.duration(value);
  if (key === "retries" && typeof value === "object") return `${value.expected ?? 0} expected, ${value.unexpected ?? 0} unexpected`;
  if (key === "cost") return fmt.cost(value);
  if (key === "status") return statusBadge(value);
  if (key === "agent_name") return h("a", { href: agentHref(value), "data-nav": true }, value);
  if (key === "parent_execution_id") return h("a", { href: executionHref(value), "data-nav": true }, value);
  if (key === "external_id" && engineLink(exec)) return h("a", { href: engineLink(exec), target: "_blank", rel: "noopener" }, value);
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/** The engine run's own page, when the API gives one. */
function engineLink(exec) {
  return exec.engine_url ?? exec.external_url ?? exec.engine_link ?? null;
}

/** Classify a step's retry the way DESIGN.md does, unless the API already did. */
export function retryClass(c) {
  if (c.retry_class) return c.retry_class;
  if ((c.attempt ?? 1) <= 1) return null;
  const policy = c.retry_policy ?? "none";
  if (policy === "none") return "unexpected";
  const max = c.max_attempts ?? 0;
  return policy === "forever" || max === 0 || c.attempt <= max ? "expected" : "unexpected";
}

/** Components as a waterfall: one bar per attempt on the execution's own time axis. */
export function waterfall(exec, components) {
  if (!components?.length) return h("p", { class: "muted" }, "No components reported for this execution.");
  const times = components.flatMap((c) => [fmt.parseTime(c.started_at), fmt.parseTime(c.completed_at)]).filter(Boolean);
  const start = Math.min(...times.map((t) => t.getTime()), fmt.parseTime(exec.started_at)?.getTime() ?? Infinity);
  const endCandidates = [...times.map((t) => t.getTime()), fmt.parseTime(exec.completed_at)?.getTime() ?? 0, Date.now() * (exec.status === "running" ? 1 : 0)];
  const end = Math.max(...endCandidates);
  const span = Math.max(end - start, 1);
  // In the API's order (by their node's first start, then attempt): not re-sorted on the times'
  // text, which reads "…:05.5+00:00" before "…:05+00:00" and a start-less attempt before all.
  const sorted = components;
  return h(
    "ol",
    { class: "waterfall" },
    sorted.map((c) => {
      const s = fmt.parseTime(c.started_at)?.getTime() ?? start;
      const e = fmt.parseTime(c.completed_at)?.getTime() ?? (c.status === "running" ? end : s);
      const left = (100 * (s - start)) / span;
      const width = Math.max(0.8, (100 * (e - s)) / span);
      const klass = retryClass(c);
      return h(
        "li",
        { class: `step step-${c.status}`, dataset: { node: c.node_id, attempt: c.attempt ?? 1 } },
        h(
          "details",
          {},
          h(
            "summary",
            {},
            h("span", { class: "step-name" }, statusBadge(c.status), " ", c.name || c.node_id, (c.attempt ?? 1) > 1 ? h("span", { class: "attempt" }, ` attempt ${c.attempt}`) : null, klass ? h("span", { class: `retry retry-${klass}`, title: `retry policy ${c.retry_policy ?? "none"}, max ${c.max_attempts ?? "—"}` }, `${klass} retry`) : null),
            h("span", { class: "step-track" }, h("span", { class: `step-bar bar-${c.status}`, style: `left:${left}%;width:${Math.min(width, 100 - left)}%` })),
            h("span", { class: "step-time muted" }, fmt.duration(c.completed_at && c.started_at ? e - s : null)),
          ),
          h(
            "div",
            { class: "step-body" },
            h("div", { class: "kv" }, `node ${c.node_id} · attempt ${c.attempt ?? 1}${c.max_attempts ? ` of ${c.max_attempts}` : ""} · retry policy ${c.retry_policy ?? "none"}`),
            c.input !== undefined && c.input !== null ? [h("h4", {}, "Input"), h("pre", {}, pretty(c.input))] : null,
            c.output !== undefined && c.output !== null ? [h("h4", {}, "Output"), h("pre", {}, pretty(c.output))] : null,
            c.error ? [h("h4", {}, `Error${c.error_type ? ` (${c.error_type})` : ""}`), h("pre", { class: "pre-error" }, c.error)] : null,
          ),
        ),
      );
    }),
  );
}

function componentsTitle(exec) {
  const parts = exec.components ?? [];
  const counts = { expected: 0, unexpected: 0 };
  for (const c of parts) {
    const klass = retryClass(c);
    if (klass) counts[klass] += 1;
  }
  const notes = Object.entries(counts).filter(([, n]) => n).map(([k, n]) => `${n} ${k} ${n === 1 ? "retry" : "retries"}`);
  return `Components (${parts.length} step${parts.length === 1 ? "" : "s"}${notes.length ? `, ${notes.join(", ")}` : ""})`;
}

function childrenTable(children, truncated = false) {
  if (!children?.length) return h("p", { class: "muted" }, "No child executions.");
  const table = h(
    "table",
    { class: "executions compact" },
    h("tbody", {}, children.map((c) => h("tr", { dataset: { id: c.id } }, h("td", {}, statusBadge(c.status)), h("td", {}, h("a", { href: executionHref(c.id), "data-nav": true }, c.id)), h("td", {}, c.agent_name), h("td", {}, timeCell(c.started_at)), h("td", { class: "c-num" }, fmt.duration(c.duration_ms))))),
  );
  if (!truncated) return table;
  return [table, h("p", { class: "muted small children-cut" }, `The first ${children.length} child executions; there are more.`)];
}

async function loadLog(id) {
  try {
    const log = await api(`/api/executions/${encodeURIComponent(id)}/log`);
    if (typeof log === "string") return log;
    return log?.execution_log ?? log?.log ?? (log ? pretty(log) : "");
  } catch (err) {
    return err.status === 404 ? "" : `Log unavailable: ${err.message}`;
  }
}

function section(title, ...body) {
  return h("section", { class: "panel" }, h("h2", {}, title), ...body);
}

/** A step of a waterfall, by its waterfall (compare shows two) and its node and attempt. */
function stepKeys(page) {
  return [...page.querySelectorAll("ol.waterfall")].flatMap((ol, i) => [...ol.querySelectorAll("li.step")].map((li) => [`${i}/${li.dataset.node}/${li.dataset.attempt}`, li]));
}

/**
 * What each detail or compare page shown was drawn from. A refresh that reads the same leaves
 * the page alone: rebuilt, it would drop a text selection and the element under the pointer
 * (the catch-up read once the live feed is ready usually finds nothing new).
 */
const drawnFrom = new WeakMap();

function drawnAlready(root, selector, data) {
  const page = root.querySelector(selector);
  return page !== null && drawnFrom.get(page) === JSON.stringify(data);
}

function remember(root, selector, data) {
  const page = root.querySelector(selector);
  if (page) drawnFrom.set(page, JSON.stringify(data));
}

/** What the reader has open or typed on a detail (or compare) page, to keep through a live refresh. */
function viewState(root, selector) {
  const page = root.querySelector(selector);
  if (!page) return null;
  const input = page.querySelector(".compare-form input");
  return {
    selector,
    open: new Set(stepKeys(page).filter(([, li]) => li.querySelector("details")?.open).map(([key]) => key)),
    compare: input?.value ?? "",
    focused: input !== null && document.activeElement === input,
    scroll: window.scrollY,
  };
}

function restoreView(root, state) {
  const page = root.querySelector(state.selector);
  if (!page) return;
  for (const [key, li] of stepKeys(page)) {
    const details = li.querySelector("details");
    if (details && state.open.has(key)) details.open = true;
  }
  const input = page.querySelector(".compare-form input");
  if (input) {
    input.value = state.compare;
    if (state.focused) input.focus();
  }
  window.scrollTo(0, state.scroll);
}

/**
 * `current()` says whether the page still wants this view (the user may have moved on).
 * With `refresh`, the page shown stays until the new one is ready, and what the reader opened,
 * typed or scrolled to is kept (a live event for this execution re-renders it); a read that
 * brings nothing new leaves the page as it is, unless `redraw`. Returns the execution read, or
 * null when it was not shown.
 */
export async function renderDetail(root, id, { navigate, current = () => true, refresh = false, redraw = false, canStop = true }) {
  const kept = refresh ? viewState(root, ".page-detail") : null;
  if (!kept) clear(root).append(h("div", { class: "loading" }, h("span", { class: "spinner" }), "Loading execution…"));
  let exec;
  try {
    exec = await api(`/api/executions/${encodeURIComponent(id)}`);
  } catch (err) {
    if (!current()) return null;
    if (kept) return null; // keep what is shown; the next event or a reload tries again
    clear(root).append(h("div", { class: "page" }, h("a", { href: "/", "data-nav": true }, "← All executions"), h("div", { class: "error-box", role: "alert" }, `Could not load execution ${id}: ${err.message}`)));
    return null;
  }
  exec = exec.execution ?? exec;
  // The detail says whether there is a log (`log_url`); older answers may not say.
  const log = exec.log_url === null || exec.has_log === false ? "" : await loadLog(id);
  if (!current()) return null;
  const drawing = { exec, log, canStop };
  if (kept && !redraw && drawnAlready(root, ".page-detail", drawing)) return exec;
  const compareInput = h("input", { type: "text", placeholder: "another execution id", "aria-label": "Compare with execution id" });
  const isSet = (k) => exec[k] !== null && exec[k] !== undefined && exec[k] !== "";
  const fields = Object.keys(exec).filter((k) => !HIDDEN_FIELDS.has(k) && isSet(k));
  const unset = Object.keys(exec).filter((k) => !HIDDEN_FIELDS.has(k) && !isSet(k));
  const link = engineLink(exec);
  clear(root).append(
    h(
      "div",
      { class: "page page-detail", dataset: { id: exec.id } },
      h("a", { href: "/", "data-nav": true, class: "back" }, "← All executions"),
      h(
        "header",
        { class: "detail-head" },
        h("h1", {}, statusBadge(exec.status), " ", fmt.agentLabel(exec), h("span", { class: "muted" }, ` · ${exec.id}`)),
        h(
          "div",
          { class: "detail-actions" },
          canStop && exec.status === "running" ? stopButton(exec) : null,
          link ? h("a", { class: "btn", href: link, target: "_blank", rel: "noopener" }, `Open in ${exec.engine ?? "engine"}`) : null,
          h("form", { class: "compare-form", onsubmit: (e) => { e.preventDefault(); if (compareInput.value.trim()) navigate(`/?compare=${encodeURIComponent(exec.id)},${encodeURIComponent(compareInput.value.trim())}`); } }, compareInput, h("button", { class: "btn", type: "submit" }, "Compare")),
        ),
      ),
      h("dl", { class: "fields" }, fields.map((k) => h("div", { class: "pair" }, h("dt", {}, k.replace(/_/g, " ")), h("dd", { dataset: { field: k } }, fieldValue(k, exec[k], exec))))),
      unset.length ? h("p", { class: "muted small unset" }, `Not reported: ${unset.map((k) => k.replace(/_/g, " ")).join(", ")}.`) : null,
      LONG_FIELDS.filter((k) => exec[k]).map((k) => section(k[0].toUpperCase() + k.slice(1), h("pre", { class: k === "error" ? "pre-error" : "" }, exec[k]))),
      section(componentsTitle(exec), waterfall(exec, exec.components)),
      section("Child executions", childrenTable(exec.children, exec.children_truncated)),
      exec.tool_calls?.length ? section("Tool calls", h("pre", {}, pretty(exec.tool_calls))) : null,
      section("Log", log ? h("pre", { class: "log" }, log) : h("p", { class: "muted" }, "No log recorded.")),
    ),
  );
  if (kept) restoreView(root, kept);
  remember(root, ".page-detail", drawing);
  return exec;
}

/**
 * Two executions side by side; with `refresh` (a live event for either), as renderDetail.
 * Returns the two as read, or null when they were not shown.
 */
export async function renderCompare(root, ids, { current = () => true, refresh = false, redraw = false } = {}) {
  if (ids.length !== 2) {
    const only = ids[0] ? [" ", h("a", { href: executionHref(ids[0]), "data-nav": true }, `Open ${ids[0]}`)] : null;
    clear(root).append(h("div", { class: "page" }, h("a", { href: "/", "data-nav": true }, "← All executions"), h("div", { class: "error-box", role: "alert" }, "Compare takes two execution ids, separated by a comma (", h("code", {}, "?compare=id1,id2"), ").", only)));
    return null;
  }
  const kept = refresh ? viewState(root, ".page-compare") : null;
  if (!kept) clear(root).append(h("div", { class: "loading" }, h("span", { class: "spinner" }), "Loading executions…"));
  let pair;
  try {
    pair = await Promise.all(ids.map((id) => api(`/api/executions/${encodeURIComponent(id)}`).then((e) => e.execution ?? e)));
  } catch (err) {
    if (!current() || kept) return null; // a refresh keeps what is shown; the next event tries again
    clear(root).append(h("div", { class: "page" }, h("a", { href: "/", "data-nav": true }, "← All executions"), h("div", { class: "error-box", role: "alert" }, `Could not load both executions: ${err.message}`)));
    return null;
  }
  if (!current()) return null;
  if (kept && !redraw && drawnAlready(root, ".page-compare", pair)) return pair;
  const [a, b] = pair;
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => !PAGE_PARTS.includes(k));
  const cell = (exec, k) => (LONG_FIELDS.includes(k) && exec[k] ? h("pre", {}, exec[k]) : fieldValue(k, exec[k], exec));
  clear(root).append(
    h(
      "div",
      { class: "page page-compare" },
      h("a", { href: "/", "data-nav": true, class: "back" }, "← All executions"),
      h("h1", {}, "Compare executions"),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "compare" },
          h("thead", {}, h("tr", {}, h("th", {}, "field"), [a, b].map((e) => h("th", {}, h("a", { href: executionHref(e.id), "data-nav": true }, e.id))))),
          h("tbody", {}, keys.map((k) => h("tr", { class: JSON.stringify(a[k]) === JSON.stringify(b[k]) ? "same" : "differs", dataset: { field: k } }, h("th", { scope: "row" }, k.replace(/_/g, " ")), h("td", {}, cell(a, k)), h("td", {}, cell(b, k))))),
        ),
      ),
      h("div", { class: "compare-grid" }, [a, b].map((e) => section(`Components of ${e.id}`, waterfall(e, e.components)))),
    ),
  );
  if (kept) restoreView(root, kept);
  remember(root, ".page-compare", pair);
  return pair;
}
