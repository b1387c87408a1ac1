// The executions page: stat cards, chart, filter bar, the list with "Load more", live updates.

import { api, currentLimit } from "./api.js";
import { chartLegend, statCards, statCardsLoading, timelineBuckets, timelineChart } from "./charts.js";
import { clear, debounce, h, toast } from "./dom.js";
import { filterBar } from "./filterbar.js";
import { hasFilters, isSet, listParams, matches, readFilters, ruledOut, statsHours, writeFilters } from "./filters.js";
import * as fmt from "./format.js";
import { rankOf } from "./lag.js";
import { placeAmong, startOf } from "./order.js";
import { headerRow, renderRow } from "./rows.js";

const PAGE_SIZE = 50;
/**
 * The database may lag the live feed: a row a live event added that a poll does not list yet
 * may simply not be written yet. It is kept this long before a poll that leaves it out takes
 * it out (the poll after a burst of events comes 1.2 s after the last one).
 */
const INGEST_GRACE_MS = 5000;

export class ExecutionsPage {
  /** `remembered`: a bare URL takes the last filters from localStorage (not when going back). */
  constructor(root, { agents, navigate, role, remembered = true }) {
    this.root = root;
    this.role = role;
    this.agents = agents;
    this.navigate = navigate;
    this.filters = readFilters({ remembered });
    if (role === "client" && !this.filters.agent_name && agents.length) this.filters.agent_name = agents[0].name;
    this.rows = new Map();
    /** Rows a live event added that the API has not listed yet: id -> when they were added. */
    this.unconfirmed = new Map();
    /** Rows a live event took out (their status left the filter): id -> that status's rank. */
    this.gone = new Map();
    /**
     * Executions a live event brought without a start (their place is the API's to say), not
     * listed yet: id -> when heard. The database can lag the feed: the list is read again.
     */
    this.unplaced = new Map();
    /** Bumped whenever the list is replaced: a poll sent before then answers for another list. */
    this.generation = 0;
    this.recheck = null;
    this.recheckAt = 0;
    this.moreTimer = null;
    this.polls = 0; // polls sent
    this.polled = 0; // the newest poll applied
    /** Stats and chart requests sent: only the newest one's answer is shown (a slow network). */
    this.statsSent = 0;
    this.chartSent = 0;
    this.closed = false;
    this.replacing = false;
    /** The list's first page failed to load: what is shown is an error, not a list to merge into. */
    this.failed = false;
    this.pending = [];
    this.selected = new Set();
    this.cursor = null;
    this.hasMore = false;
    this.total = 0;
    this.request = null;
    /** The list's path and parameters as its first page was asked for (later pages reuse them). */
    this.listed = null;
    this.fleetWide = role !== "client";
    this.refreshStatsSoon = debounce(() => this.fleetWide && !this.closed && this.loadStats(), 1500);
    this.syncSoon = debounce(() => this.poll({ toasts: false }), 1200);
  }

  mount() {
    writeFilters(this.filters);
    clear(this.root).append(this.layout());
    this.reload();
  }

  /** The page is left: nothing it has scheduled may fetch any more. */
  close() {
    this.closed = true;
    clearTimeout(this.recheck);
    clearTimeout(this.moreTimer);
    this.request?.abort();
  }

  layout() {
    this.cards = h("section", { class: "cards", "aria-label": "Statistics" });
    this.chart = h("div", { class: "chart-box" });
    this.summary = h("span", { class: "summary" });
    this.compareButton = h("button", { class: "btn", type: "button", hidden: true, onclick: () => this.compare() }, "Compare");
    this.tbody = h("tbody");
    this.table = h("table", { class: "executions" }, headerRow(), this.tbody);
    this.tableWrap = h("div", { class: "table-wrap" }, this.table);
    this.state = h("div", { class: "list-state" });
    this.more = h("button", { class: "btn btn-more", type: "button", hidden: true, onclick: () => this.loadMore() }, "Load more");
    this.moreError = h("p", { class: "more-error", role: "alert", hidden: true });
    return h(
      "div",
      { class: "page page-executions" },
      // Fleet-wide statistics are not for clients (the API answers them 403).
      this.fleetWide ? this.cards : null,
      this.fleetWide
        ? h("details", { class: "panel chart-panel", open: !matchMedia("(max-width: 760px)").matches }, h("summary", {}, "Activity"), chartLegend(), this.chart)
        : null,
      this.filterBar(),
      h("div", { class: "list-head" }, this.summary, this.compareButton),
      this.tableWrap,
      this.state,
      h("div", { class: "list-foot" }, this.moreError, this.more),
    );
  }

  filterBar() {
    this.form = filterBar({
      filters: this.filters,
      agents: this.agents,
      anyAgent: this.fleetWide,
      onChange: (patch, options) => this.setFilters({ ...this.filters, ...patch }, options),
      onClear: () => this.setFilters({}),
    });
    return this.form;
  }

  /** Change filters: URL, localStorage, the form, the list, the stats, the live subscription. */
  setFilters(filters, { keepForm = false } = {}) {
    // A search typed just before the page was left comes after it: it is for nobody now.
    if (this.closed) return;
    this.filters = Object.fromEntries(Object.entries(filters).filter(([, v]) => isSet(v)));
    if (!this.fleetWide && !this.filters.agent_name && this.agents.length) this.filters.agent_name = this.agents[0].name;
    writeFilters(this.filters, { push: true });
    if (!keepForm) {
      const old = this.form;
      // A search typed into the old form and still waiting must not land on the new one.
      old.cancelSearch?.();
      // Focus stays on the control used (a keyboard user's arrow key in a select changes the
      // filter at once): the new form's same control, else its "Clear filters".
      const focused = old.contains(document.activeElement) ? document.activeElement : null;
      const fresh = this.filterBar();
      old.replaceWith(fresh);
      if (focused) (fresh.querySelector(`[name="${CSS.escape(focused.name ?? "")}"]`) ?? fresh.querySelector(".btn-clear"))?.focus();
    }
    this.onFiltersChanged?.(this.filters);
    this.reload();
  }

  reload() {
    this.generation += 1;
    this.cursor = null;
    if (this.fleetWide) {
      this.loadStats();
      this.loadChart();
    }
    return this.loadPage({ replace: true });
  }

  async loadStats() {
    const hours = statsHours(this.filters);
    const seq = ++this.statsSent;
    // An answer for filters since left (or a newer request's) must not paint over the newest.
    const stale = () => this.closed || seq !== this.statsSent;
    if (!this.cards.childElementCount) this.cards.append(...statCardsLoading());
    try {
      const stats = await api("/api/executions/stats", { params: { hours, agent_name: this.filters.agent_name } });
      if (stale()) return;
      clear(this.cards).append(...statCards(stats, hours));
      // The stats endpoint narrows by agent and window only; say so rather than mislead.
      const narrower = ["status", "triggered_by", "search", "project", "workflow"].filter((k) => this.filters[k]);
      const listOnly = ["start_time", "end_time"].filter((k) => this.filters[k]);
      if (narrower.length || listOnly.length) {
        const scope = `Statistics cover ${this.filters.agent_name ? "this agent" : "all agents"} in the window`;
        const chartToo = narrower.length ? `; the ${narrower.map((k) => k.replace("_", " ")).join(" and ")} ${narrower.length > 1 ? "filters apply" : "filter applies"} to the chart and the list only` : "";
        const list = listOnly.length ? `; the link's ${listOnly.map((k) => k.replace("_", " ")).join(" and ")} ${listOnly.length > 1 ? "apply" : "applies"} to the list only` : "";
        this.cards.append(h("p", { class: "cards-note muted small" }, `${scope}${chartToo}${list}.`));
      }
    } catch (err) {
      if (stale()) return;
      // Rate limited: the figures shown stay (the banner says why they are not refreshed).
      if (err.status === 429 && this.cards.querySelector(".card") && !this.cards.querySelector(".skeleton, .card-error")) return;
      clear(this.cards).append(h("div", { class: "card card-error" }, `Statistics unavailable: ${err.message}`));
    }
  }

  async loadChart() {
    const hours = statsHours(this.filters);
    const bucket = hours > 72 ? "day" : "hour";
    // The chart covers its own window (the time range); a link's start/end narrow the list.
    const { agent_name, status, triggered_by, search, project, workflow } = this.filters;
    const params = { hours, bucket, agent_name, status, triggered_by, search, project, workflow };
    const seq = ++this.chartSent;
    const stale = () => this.closed || seq !== this.chartSent;
    try {
      const data = await api("/api/executions/timeline", { params });
      if (stale()) return;
      const width = Math.max(320, Math.min(this.chart.clientWidth || 720, 1400));
      clear(this.chart).append(timelineChart(timelineBuckets(data), { bucket, width }));
    } catch (err) {
      if (stale()) return;
      if (err.status === 429 && this.chart.querySelector("svg")) return; // the chart shown stays
      clear(this.chart).append(h("p", { class: "muted" }, `Chart unavailable: ${err.message}`));
    }
  }

  async loadPage({ replace = false } = {}) {
    if (!replace && this.replacing) return; // the list is being replaced: nothing to extend yet
    this.request?.abort();
    const controller = new AbortController();
    this.request = controller;
    if (replace) {
      // Live updates that arrive while the list is replaced wait for it (see upsert).
      this.replacing = true;
      this.showState("loading");
    }
    this.more.disabled = true;
    this.moreError.hidden = true;
    try {
      // A later page continues this very list: the API refuses a cursor with other filters, and
      // a time range's start computed a moment later is another filter.
      if (replace || !this.listed) this.listed = this.listRequest();
      const [path, first] = this.listed;
      const params = !replace && this.cursor ? { ...first, cursor: this.cursor } : first;
      const page = await api(path, { params, signal: controller.signal });
      if (replace) {
        this.rows.clear();
        this.unconfirmed.clear();
        this.unplaced.clear();
        this.gone.clear();
        clear(this.tbody);
        this.failed = false;
      }
      for (const exec of page.executions ?? []) {
        this.unconfirmed.delete(exec.id);
        if (this.rows.has(exec.id)) continue;
        this.rows.set(exec.id, exec);
        this.tbody.append(this.row(exec));
      }
      this.cursor = page.next_cursor ?? null;
      this.hasMore = Boolean(page.has_more && this.cursor);
      this.total = page.total_count ?? this.rows.size;
      // Past a cap the API stops counting exactly (`total_count_exact: false`).
      this.totalExact = page.total_count_exact !== false;
      this.showState(this.rows.size ? null : "empty");
    } catch (err) {
      if (err.name === "AbortError") return;
      if (replace) {
        this.rows.clear();
        this.unconfirmed.clear();
        clear(this.tbody);
        this.failed = true;
        this.showState("error", err);
      } else {
        // The rows shown stay, and so does the cursor: the button tries the same page again.
        this.moreError.textContent = `Could not load more executions: ${err.message}`;
        this.moreError.hidden = false;
      }
    } finally {
      if (this.request === controller) {
        this.request = null;
        this.enableMore();
        this.renderSummary();
        if (replace) this.flushPending();
      }
    }
  }

  /** "Load more" is offered again, once the API's Retry-After (if any) has passed. */
  enableMore() {
    clearTimeout(this.moreTimer);
    const limit = currentLimit();
    this.more.disabled = Boolean(limit);
    if (limit) this.moreTimer = setTimeout(() => !this.closed && this.enableMore(), limit.until - Date.now() + 50);
  }

  flushPending() {
    this.replacing = false;
    const pending = this.pending;
    this.pending = [];
    for (const [exec, options] of pending) this.upsert(exec, options);
  }

  /** The list's path and parameters; clients may only use their agents' own lists. */
  listRequest() {
    const params = { ...listParams(this.filters), limit: PAGE_SIZE };
    if (this.role === "client" && params.agent_name) {
      const path = `/api/agents/${encodeURIComponent(params.agent_name)}/executions`;
      delete params.agent_name;
      return [path, params];
    }
    return ["/api/executions", params];
  }

  loadMore() {
    return this.loadPage({ replace: false });
  }

  row(exec) {
    const onSelect = (id, on) => {
      if (on) this.selected.add(id);
      else this.selected.delete(id);
      this.renderSummary();
    };
    // Clients may not terminate executions (the API answers them 403).
    return renderRow(exec, this.selected, onSelect, { canStop: this.role !== "client" });
  }

  renderSummary() {
    this.more.hidden = !this.hasMore;
    const shown = this.rows.size;
    // The API may count a moment behind the rows shown (its count is cached for a few seconds).
    const total = `${fmt.count(Math.max(this.total, shown))}${this.totalExact === false ? "+" : ""}`;
    this.summary.textContent = shown ? `Showing ${fmt.count(shown)} of ${total} executions` : "";
    this.compareButton.hidden = this.selected.size !== 2;
  }

  showState(kind, err) {
    this.table.dataset.state = kind ?? "ready";
    this.tableWrap.hidden = kind === "error" || kind === "empty";
    clear(this.state);
    this.state.dataset.state = kind ?? "ready";
    if (kind === "loading") {
      this.state.append(h("div", { class: "loading" }, h("span", { class: "spinner" }), "Loading executions…"));
    } else if (kind === "empty") {
      const text = hasFilters(this.filters) ? "No executions match these filters." : "No executions yet. They appear here as soon as agents publish events.";
      this.state.append(
        h("div", { class: "empty" }, h("p", {}, text), hasFilters(this.filters) ? h("button", { class: "btn", type: "button", onclick: () => this.setFilters({}) }, "Clear filters") : null),
      );
    } else if (kind === "error") {
      this.state.append(
        h(
          "div",
          { class: "error-box", role: "alert" },
          h("p", {}, `Could not load executions: ${err.message}`),
          h("button", { class: "btn", type: "button", onclick: () => this.reload() }, "Retry"),
          hasFilters(this.filters) ? [" ", h("button", { class: "btn", type: "button", onclick: () => this.setFilters({}) }, "Clear filters")] : null,
        ),
      );
    }
  }

  compare() {
    const [a, b] = [...this.selected];
    this.navigate(`/?compare=${encodeURIComponent(a)},${encodeURIComponent(b)}`);
  }

  /**
   * Put one execution into the list: update its row in place, or add it at the top.
   *
   * With `live`, `exec` is a notifier summary: it is added only if it may match the filters
   * (`matches`: what it does not carry is no reason to leave it out), and a row it moves out of
   * the status or agent filter leaves the list. Without, it is a row the API listed under these
   * very filters: the API's answer is never filtered again here.
   */
  upsert(exec, { highlight = true, live = false } = {}) {
    if (this.replacing) {
      this.pending.push([exec, { highlight, live }]);
      return;
    }
    // Under the error of a list that failed to load, a live row would pass for the whole list
    // ("Showing 1 of 1", no "Load more"): the poll that follows loads the list itself.
    if (this.failed) return;
    if (!live) this.unconfirmed.delete(exec.id);
    const old = this.rows.get(exec.id);
    if (old) {
      const merged = { ...old };
      for (const [k, v] of Object.entries(exec)) if (v !== null && v !== undefined) merged[k] = v;
      // The database may lag the live feed for a moment: a status never moves backwards.
      if (rankOf(exec.status) < rankOf(old.status)) merged.status = old.status;
      if (live && ruledOut(merged, this.filters)) {
        this.remove(exec.id);
        this.gone.set(exec.id, rankOf(merged.status));
        this.total = Math.max(0, this.total - 1);
        this.showState(this.rows.size ? null : "empty");
        this.renderSummary();
        return;
      }
      const tr = this.trOf(exec.id);
      const fresh = this.row(merged);
      if (tr) tr.replaceWith(fresh);
      // A start learnt or corrected moves the row; past the rows loaded, a later page brings it.
      if (startOf(merged) !== null && startOf(merged) !== startOf(old)) {
        fresh.remove();
        if (!this.insert(merged, fresh)) {
          this.remove(exec.id);
          this.renderSummary();
          return;
        }
      }
      this.rows.set(exec.id, merged);
      if (highlight) flash(fresh);
      return;
    }
    if (live) {
      if (!matches(exec, this.filters) || rankOf(exec.status) < (this.gone.get(exec.id) ?? -1)) return;
      // Without a start its place is unknown: the API fill that follows (syncSoon) lists it there.
      if (startOf(exec) === null) {
        this.unplaced.set(exec.id, this.unplaced.get(exec.id) ?? Date.now());
        this.recheckIn(1000); // also when syncSoon's read is dropped (the list was being replaced)
        return;
      }
    }
    const fresh = this.row(exec);
    // Past the rows loaded while more pages exist: "Load more" brings it. The count is the API's
    // to say (an execution already counted may have just completed), which the fill re-reads.
    if (!this.insert(exec, fresh)) return;
    if (live) {
      this.gone.delete(exec.id);
      this.unconfirmed.set(exec.id, Date.now());
    }
    this.rows.set(exec.id, exec);
    if (highlight) flash(fresh);
    this.total += 1;
    this.showState(null);
    this.renderSummary();
  }

  trOf(id) {
    return this.tbody.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
  }

  /**
   * Put a new row's element at its place in the list order (newest start first). False when it
   * lies past the last row loaded while more pages exist. A row without a start (the API's, not
   * started yet) goes on top: it sorts by first sight, and `follow` puts it where the API says.
   */
  insert(exec, tr) {
    if (startOf(exec) === null) {
      this.tbody.prepend(tr);
      return true;
    }
    const shown = [...this.tbody.children].map((el) => this.rows.get(el.dataset.id)).filter(Boolean);
    const before = placeAmong(shown, exec);
    if (before !== null) {
      this.trOf(before).before(tr);
      return true;
    }
    if (this.hasMore) return false;
    this.tbody.append(tr);
    return true;
  }

  /** Order the rows a poll listed as the API listed them (the rows between stay where they are). */
  follow(list) {
    let prev = null;
    for (const exec of list) {
      const tr = this.trOf(exec.id);
      if (!tr) continue;
      if (prev && prev.compareDocumentPosition(tr) & Node.DOCUMENT_POSITION_PRECEDING) prev.after(tr);
      prev = tr;
    }
  }

  /** Take one row out of the list (its count is the caller's). */
  remove(id) {
    this.rows.delete(id);
    this.unconfirmed.delete(id);
    this.selected.delete(id);
    this.trOf(id)?.remove();
  }

  /**
   * A notifier message. Its summary holds only what the event knew (a completion often carries
   * just id and status), so the row is shown at once and then filled from the API shortly after.
   */
  onLive(message) {
    const exec = message.execution;
    if (message.component || !exec.status) {
      if (this.rows.has(exec.id)) this.syncSoon();
      return;
    }
    const before = this.rows.get(exec.id);
    // An execution belongs to the agent that first reported it: ingest refuses another agent's
    // events for it (the feed still carries them), so they must not repaint its row.
    if (before?.agent_name && exec.agent_name && before.agent_name !== exec.agent_name) return;
    this.upsert(exec, { live: true });
    if (exec.status === "failed" && before?.status !== "failed") failureToast(exec);
    this.syncSoon();
    this.refreshStatsSoon();
  }

  /** The first page again, merged into what is shown (polling, and after live events). */
  async poll({ toasts = true } = {}) {
    if (this.closed) return;
    // Nothing to merge into: load the list afresh (its cursor and "Load more" with it), which
    // also brings the page back by itself once the API answers again.
    if (this.failed) {
      if (!this.replacing) await this.reload();
      return;
    }
    const generation = this.generation;
    const seq = ++this.polls;
    let page;
    try {
      const [path, params] = this.listRequest();
      page = await api(path, { params });
    } catch {
      this.awaitUnplaced([]); // executions heard without a start are read for again
      return; // The indicator already says we are not live; the next poll tries again.
    }
    // The filters changed (or the list was reloaded) while this poll was out, so it answered
    // for another list; or a later poll answered first. Either way its rows and count are stale.
    if (this.closed || generation !== this.generation || this.replacing || seq < this.polled) return;
    this.polled = seq;
    const list = page.executions ?? [];
    for (const exec of list) {
      const old = this.rows.get(exec.id);
      this.unconfirmed.delete(exec.id);
      if (old && changed(old, exec)) {
        if (toasts && exec.status === "failed" && old.status !== "failed") failureToast(exec);
        this.upsert(exec, { highlight: old.status !== exec.status });
      }
    }
    // A row a live event just took out may come back from a database that has not caught up
    // with the feed yet (it still says running): a status never moves backwards.
    const behind = (e) => rankOf(e.status) < (this.gone.get(e.id) ?? -1);
    for (const exec of list.filter((e) => !this.rows.has(e.id) && !behind(e)).reverse()) {
      this.gone.delete(exec.id);
      this.upsert(exec);
      if (toasts && exec.status === "failed") failureToast(exec);
    }
    this.follow(list);
    this.awaitUnplaced(list);
    const dropped = this.dropUnlisted(list, Boolean(page.has_more));
    this.total = page.total_count ?? this.total;
    this.totalExact = page.total_count_exact !== false;
    if (dropped && !this.rows.size) this.showState("empty");
    this.renderSummary();
    if (toasts && this.fleetWide) this.loadStats();
  }

  /**
   * Take out the rows shown that the API no longer lists (they stopped matching) within the part
   * of the list a poll re-read: all of it when it has no more, else down to its last row. Older
   * rows ("Load more") were not re-read, and a row a live event added may not be written yet.
   */
  dropUnlisted(list, hasMore) {
    const listed = new Set(list.map((e) => e.id));
    // The list runs newest first by start (else first seen, which summaries do not carry): the
    // oldest start it shows bounds what it covered.
    const floor = hasMore ? startOf(list.findLast((e) => startOf(e) !== null)) : null;
    if (hasMore && floor === null) return 0;
    const now = Date.now();
    let wait = null;
    let dropped = 0;
    for (const [id, row] of [...this.rows]) {
      if (listed.has(id)) continue;
      const added = this.unconfirmed.get(id);
      if (hasMore) {
        const start = startOf(row);
        // Strictly newer only: rows in the same millisecond may sort either way of the cut.
        // A row without a start is the API's (live rows without one wait for it to list them).
        if (start === null ? added === undefined : start <= floor) continue;
      }
      if (added !== undefined && now - added < INGEST_GRACE_MS) {
        wait = Math.min(wait ?? Infinity, added + INGEST_GRACE_MS - now);
        continue;
      }
      this.remove(id);
      dropped += 1;
    }
    if (wait !== null) this.recheckIn(wait + 100);
    return dropped;
  }

  /**
   * Live executions without a start that this read did not list: read again (every second at
   * most) until INGEST_GRACE_MS after they were heard, by when the API has them if they match.
   */
  awaitUnplaced(list) {
    for (const exec of list) this.unplaced.delete(exec.id);
    const now = Date.now();
    for (const [id, heard] of this.unplaced) {
      const left = heard + INGEST_GRACE_MS - now;
      if (this.rows.has(id) || left <= 0) this.unplaced.delete(id);
      else this.recheckIn(Math.min(1000, left + 100));
    }
  }

  /** Poll again in `ms`, unless a recheck is already due sooner. */
  recheckIn(ms) {
    const at = Date.now() + ms;
    if (this.recheck !== null && this.recheckAt <= at) return;
    clearTimeout(this.recheck);
    this.recheckAt = at;
    this.recheck = setTimeout(() => {
      this.recheck = null;
      this.poll({ toasts: false });
    }, ms);
  }
}

function changed(old, fresh) {
  return ["status", "completed_at", "duration_ms", "cost", "tokens_in", "tokens_out", "error", "message", "started_at", "agent_display_name"].some(
    (k) => fresh[k] !== undefined && fresh[k] !== old[k],
  );
}

function failureToast(exec) {
  toast(`${fmt.agentLabel(exec)} failed: ${fmt.firstLine(exec.error || exec.message || exec.id, 100)}`, "error");
}

function flash(el) {
  el.classList.add("flash");
  setTimeout(() => el.classList.remove("flash"), 2000);
}
