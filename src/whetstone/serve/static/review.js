// The review page: a queue of records on the left, one record on the right, keyboard first.
// Record text only ever reaches the page through textContent (see el()), never innerHTML:
// inputs and answers come from production traffic and may hold markup.
"use strict";

const API = "/review/api";
const PAGE_SIZE = 50;
const ANNOTATOR_KEY = "whetstone.review.annotator";

const state = {
  config: null,
  csrf: null, // the token the server binds to the login cookie, sent with every decision
  items: [], // queue summaries loaded so far
  total: 0,
  index: -1, // position of the shown record in items
  record: null, // the shown record, in full
  busy: false,
};

const $ = (id) => document.getElementById(id);

// Build an element whose text is set as text: the one way record data enters the page.
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

class ApiError extends Error {}

function errorMessage(body, fallback) {
  if (!body) return fallback;
  if (body.error && body.error.message) return body.error.message;
  const detail = body.detail;
  if (detail && detail.error && detail.error.message) return detail.error.message;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  if (typeof detail === "string") return detail;
  return fallback;
}

async function api(path, body) {
  const options = { credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    if (state.csrf) options.headers["X-Whetstone-CSRF"] = state.csrf;
    options.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, options);
  if (response.status === 401) {
    window.location.assign("/review/login");
    throw new ApiError("log in first");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) throw new ApiError(errorMessage(data, `${response.status} ${response.statusText}`));
  return data;
}

function say(text, kind) {
  const box = $("message");
  box.textContent = text || "";
  box.className = "message" + (kind ? " " + kind : "");
}

// ---- filters ------------------------------------------------------------------------------
function filters() {
  const task = $("task-filter").value;
  const curate = !$("curate-toggle").hidden && $("curate-order").checked && task !== "";
  return { task, status: $("status-filter").value, order: curate ? "curate" : "priority" };
}

function matchesStatus(item) {
  const status = $("status-filter").value;
  return status === "all" || item.status === status;
}

function setCategories(categories) {
  const list = $("category-list");
  list.replaceChildren(...categories.map((c) => {
    const option = document.createElement("option");
    option.value = c;
    return option;
  }));
}

async function loadConfig() {
  const config = await api("/config");
  state.config = config;
  state.csrf = config.csrf_token;
  $("logout-csrf").value = config.csrf_token || "";
  const select = $("task-filter");
  for (const task of config.tasks) {
    const option = el("option", null, `${task.name} (${task.kind})`);
    option.value = task.name;
    select.append(option);
  }
  $("curate-toggle").hidden = !config.curate_available;
  $("logout").hidden = !config.login;
  setCategories(config.categories);
  const params = new URLSearchParams(window.location.search);
  if (params.has("task")) select.value = params.get("task");
  if (params.has("status")) $("status-filter").value = params.get("status");
  syncCurateToggle();
}

function syncCurateToggle() {
  const noTask = $("task-filter").value === "";
  $("curate-order").disabled = noTask;
  if (noTask) $("curate-order").checked = false;
}

// ---- the queue ----------------------------------------------------------------------------
async function loadQueue() {
  const f = filters();
  state.items = [];
  state.index = -1;
  $("queue-list").replaceChildren();
  $("queue-count").textContent = "loading…";
  await loadMore(f);
  if (state.items.length) await show(0);
  else showEmpty();
}

async function loadMore(f = filters()) {
  // Records reviewed in this session may have left the filter (an unreviewed record once
  // accepted): the server's offset counts only those still in it.
  const offset = state.items.filter(matchesStatus).length;
  const params = new URLSearchParams({ status: f.status, order: f.order, limit: PAGE_SIZE, offset });
  if (f.task) params.set("task", f.task);
  const page = await api(`/queue?${params}`);
  const seen = new Set(state.items.map((i) => i.id));
  const fresh = page.items.filter((i) => !seen.has(i.id));
  state.items.push(...fresh);
  state.total = page.total;
  for (const item of fresh) $("queue-list").append(queueRow(item));
  updateQueueHead();
  return fresh.length;
}

function remaining() {
  return state.total - state.items.filter(matchesStatus).length;
}

function updateQueueHead() {
  const reviewed = state.items.filter((i) => !matchesStatus(i)).length;
  let text = `${state.total} in this queue`;
  if (reviewed) text += ` · ${reviewed} reviewed here`;
  $("queue-count").textContent = text;
  $("load-more").hidden = remaining() <= 0;
}

function queueRow(item) {
  const li = el("li");
  li.dataset.id = item.id;
  fillQueueRow(li, item);
  li.addEventListener("click", () => {
    const i = state.items.findIndex((x) => x.id === item.id);
    if (i >= 0) show(i);
  });
  return li;
}

function fillQueueRow(li, item) {
  const line = el("div", "line");
  line.append(el("strong", null, `#${item.id}`), el("span", null, item.task));
  if (item.confidence !== null && item.confidence !== undefined) {
    line.append(el("span", null, `conf ${item.confidence.toFixed(2)}`));
  }
  for (const tag of item.tags) {
    line.append(el("span", tag === "thumbs-down" || tag === "hard" ? "tag flag" : "tag", tag));
  }
  if (item.status !== "unreviewed") line.append(el("span", `status ${item.status}`, item.status));
  li.replaceChildren(line, el("span", "preview", item.preview || "(empty input)"));
  li.classList.toggle("done", item.status !== "unreviewed");
}

function queueRowFor(id) {
  return $("queue-list").querySelector(`li[data-id="${Number(id)}"]`);
}

function showEmpty() {
  state.record = null;
  $("record").hidden = true;
  $("empty").hidden = false;
  updateQueueHead();
}

// ---- one record ---------------------------------------------------------------------------
function pretty(text, kind) {
  if (text === null || text === undefined) return null;
  if (kind !== "extract") return text;
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (_) {
    return text; // not JSON: show what the model said, as it said it
  }
}

function renderInput(input) {
  const box = $("input");
  if (typeof input === "string") {
    box.replaceChildren(document.createTextNode(input));
    return;
  }
  box.replaceChildren(...input.map((m) => {
    const msg = el("div", "msg");
    msg.append(el("span", "role", m.role), document.createTextNode(m.content));
    return msg;
  }));
}

function renderMeta(rec) {
  const meta = $("record-meta");
  const parts = [el("span", "rid", `#${rec.id}`), el("span", null, rec.task), el("span", `status ${rec.status}`, rec.status)];
  if (rec.model) parts.push(el("span", null, `model ${rec.model}`));
  if (rec.confidence !== null) parts.push(el("span", null, `confidence ${rec.confidence.toFixed(3)}`));
  parts.push(el("span", null, `source ${rec.source}`));
  for (const tag of rec.tags) parts.push(el("span", tag === "thumbs-down" || tag === "hard" ? "tag flag" : "tag", tag));
  meta.replaceChildren(...parts);
}

function renderLabels(rec) {
  const box = $("label-choices");
  box.hidden = !rec.labels;
  box.replaceChildren(...(rec.labels || []).map((label) => {
    const button = el("button", null, label);
    button.type = "button";
    button.addEventListener("click", () => {
      $("answer").value = label;
      $("answer").focus();
    });
    return button;
  }));
}

function renderHistory(rec) {
  $("history").replaceChildren(...rec.history.map((ev) => {
    const when = new Date(ev.created_at).toLocaleString();
    let text = `${when}: ${ev.status}`;
    if (ev.annotator) text += ` by ${ev.annotator}`;
    if (ev.error_category) text += ` [${ev.error_category}]`;
    if (ev.reference !== null) text += ` → ${ev.reference}`;
    if (ev.rating !== null) text += ` (rating ${ev.rating})`;
    if (ev.comment) text += ` “${ev.comment}”`;
    return el("li", null, text);
  }));
  if (!rec.history.length) $("history").append(el("li", null, "no review yet"));
}

// An escalated answer (meta.cascade, see serve/cascade.py): the workhorse's and the hero's
// answers side by side; the hero's is a teacher's answer, a reference only once confirmed.
function heroAnswer(rec) {
  const c = rec.meta && rec.meta.cascade;
  const hero = c && c.hero;
  return hero && typeof hero.output === "string" ? hero.output : null;
}

function renderCascade(rec) {
  const c = rec.meta && rec.meta.cascade;
  $("cascade").hidden = !c;
  if (!c) return;
  const wh = c.workhorse;
  let whText = "(not asked: the hero route)";
  if (wh) {
    whText = pretty(wh.output, rec.kind);
    if (typeof wh.confidence === "number") whText += `\n\n(confidence ${wh.confidence.toFixed(3)})`;
  }
  $("cascade-workhorse").textContent = whText;
  const hero = heroAnswer(rec);
  let heroText = "(not asked)";
  if (hero !== null) heroText = pretty(hero, rec.kind);
  else if (c.hero && c.hero.error) heroText = `(failed: ${c.hero.error})`;
  $("cascade-hero").textContent = heroText;
  $("cascade-hero-model").textContent = c.hero && c.hero.model ? `(${c.hero.model})` : "";
  $("use-hero").hidden = hero === null;
}

// One click: the hero's answer becomes the reference (a correction, as if typed).
function useHero() {
  const hero = state.record ? heroAnswer(state.record) : null;
  if (hero === null) return;
  $("answer").value = hero;
  decide("correct");
}

function render(rec) {
  state.record = rec;
  $("empty").hidden = true;
  $("record").hidden = false;
  renderMeta(rec);
  renderInput(rec.input);
  const output = pretty(rec.output, rec.kind);
  if (output === null) $("output").replaceChildren(el("span", "none", "(no model output)"));
  else $("output").textContent = output;
  $("answer").value = pretty(rec.reference ?? rec.output ?? "", rec.kind);
  $("category").value = rec.error_category || "";
  $("comment").value = ""; // a comment belongs to one decision, kept in the history
  setCategories(rec.categories);
  renderLabels(rec);
  renderCascade(rec);
  renderHistory(rec);
}

async function show(index) {
  if (index < 0 || index >= state.items.length) return;
  state.index = index;
  for (const li of $("queue-list").children) li.classList.remove("current");
  const row = queueRowFor(state.items[index].id);
  if (row) {
    row.classList.add("current");
    row.scrollIntoView({ block: "nearest" });
  }
  say("");
  try {
    render(await api(`/records/${state.items[index].id}`));
  } catch (e) {
    say(e.message, "error");
  }
}

async function next() {
  if (state.index + 1 >= state.items.length && remaining() > 0) {
    try {
      await loadMore();
    } catch (e) {
      say(e.message, "error");
      return false;
    }
  }
  if (state.index + 1 < state.items.length) {
    await show(state.index + 1);
    return true;
  }
  return false;
}

async function prev() {
  if (state.index > 0) await show(state.index - 1);
}

// ---- decisions ----------------------------------------------------------------------------
async function decide(action) {
  const rec = state.record;
  if (!rec || state.busy) return;
  const body = {
    annotator: $("annotator").value.trim() || null,
    error_category: $("category").value.trim() || null,
    comment: $("comment").value.trim() || null,
  };
  if (action === "correct") body.reference = $("answer").value;
  state.busy = true;
  try {
    const updated = await api(`/records/${rec.id}/${action}`, body);
    const item = state.items[state.index];
    if (item && item.id === updated.id) {
      const wasIn = matchesStatus(item);
      item.status = updated.status;
      if (wasIn && !matchesStatus(item)) state.total -= 1; // it has left the filtered queue
      const row = queueRowFor(item.id);
      if (row) fillQueueRow(row, item);
    }
    if (updated.categories) setCategories(updated.categories);
    updateQueueHead();
    const done = `Record #${updated.id} ${updated.status}.`;
    if (!(await next())) {
      render(updated);
      say(`${done} That was the last record in the queue.`, "ok");
    } else {
      say(done, "ok");
    }
  } catch (e) {
    // A refused correction (label not in the set, JSON failing the schema) stays on screen
    // with the reviewer's text, so that they can fix it; nothing was stored.
    say(e.message, "error");
  } finally {
    state.busy = false;
  }
}

// ---- keyboard -----------------------------------------------------------------------------
function onKey(event) {
  if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
    event.preventDefault();
    decide("correct");
    return;
  }
  const target = event.target;
  if (target instanceof Element && target.matches("input, textarea, select")) {
    if (event.key === "Escape") target.blur();
    return; // typing, not a shortcut
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    a: () => decide("accept"),
    r: () => decide("reject"),
    c: () => decide("correct"),
    h: () => useHero(),
    j: () => next(),
    k: () => prev(),
    e: () => $("category").focus(),
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault(); // so that `e` focuses the field without typing an "e" in it
    action();
  }
}

async function start() {
  const annotator = $("annotator");
  annotator.value = window.localStorage.getItem(ANNOTATOR_KEY) || "";
  annotator.addEventListener("input", () => window.localStorage.setItem(ANNOTATOR_KEY, annotator.value.trim()));
  $("accept").addEventListener("click", () => decide("accept"));
  $("reject").addEventListener("click", () => decide("reject"));
  $("correct").addEventListener("click", () => decide("correct"));
  $("use-hero").addEventListener("click", () => useHero());
  $("next").addEventListener("click", () => next());
  $("prev").addEventListener("click", () => prev());
  $("load-more").addEventListener("click", () => loadMore().catch((e) => say(e.message, "error")));
  const reload = () => loadQueue().catch((e) => say(e.message, "error"));
  $("task-filter").addEventListener("change", () => {
    syncCurateToggle();
    reload();
  });
  $("status-filter").addEventListener("change", reload);
  $("curate-order").addEventListener("change", reload);
  document.addEventListener("keydown", onKey);
  try {
    await loadConfig();
    await loadQueue();
    document.body.dataset.ready = "true";
  } catch (e) {
    $("record").hidden = false;
    say(e.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", start);
