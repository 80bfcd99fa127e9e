// The nodeferry dashboard: tasks newest first, live through each task's event
// stream. Plain DOM, no build step. Everything that came from an instance is
// set as text, never as HTML.
"use strict";

const FINAL_STATES = new Set(["completed", "failed", "cancelled", "lost"]);
const LIST_REFRESH_MS = 3000;
const LOG_REFRESH_MS = 2000;
const LOG_TAIL_CHARS = 16000;
const RETRY_MS = 2000;
// A browser opens at most ~6 HTTP/1.1 connections per host; each event stream
// holds one. Beyond this many running tasks, the rest are polled instead.
const MAX_STREAMS = 4;
let openStreams = 0;

const tasks = new Map(); // task_id -> entry (see ensureEntry)
let token = takeTokenFromUrl() || localStorage.getItem("nodeferry.token") || "";

// `/?token=…` opens the page on a controller with a token; keep the token for
// API calls and take it out of the address bar (and so out of history).
function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  const given = url.searchParams.get("token");
  if (!given) return "";
  localStorage.setItem("nodeferry.token", given);
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
  return given;
}

// -- HTTP ---------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

function headers(extra) {
  const h = Object.assign({Accept: "application/json"}, extra || {});
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function api(method, path, body) {
  const init = {method, headers: headers(body ? {"Content-Type": "application/json"} : {})};
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401 || response.status === 403) askForToken();
  if (!response.ok) throw new HttpError(response.status, data);
  return data;
}

// Server-sent events over fetch (not EventSource) so the token can travel in a
// header rather than in the URL.
async function streamEvents(taskId, onEvent, signal) {
  const response = await fetch(`api/tasks/${encodeURIComponent(taskId)}/events`, {
    headers: headers({Accept: "text/event-stream"}),
    signal,
  });
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    throw new HttpError(response.status, data);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

// -- DOM helpers ----------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function parseTime(value) {
  if (!value) return null;
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t;
}

function duration(start, end) {
  const s = parseTime(start);
  if (s === null) return "";
  const e = parseTime(end) ?? Date.now();
  let secs = Math.max(0, Math.floor((e - s) / 1000));
  const hours = Math.floor(secs / 3600);
  secs -= hours * 3600;
  const mins = Math.floor(secs / 60);
  secs -= mins * 60;
  const mm = hours ? String(mins).padStart(2, "0") : String(mins);
  return (hours ? `${hours}:` : "") + `${mm}:${String(secs).padStart(2, "0")}`;
}

// A duration that the once-a-second tick keeps current while it runs.
function clock(cls, start, end) {
  return h("span", {class: `${cls} clock`, "data-start": start || "", "data-end": end || ""}, duration(start, end));
}

function label(status) {
  return String(status || "").replace(/_/g, " ");
}

function badge(status) {
  return h("span", {class: `badge s-${status || "unknown"}`}, label(status));
}

function lastLine(text) {
  const lines = String(text || "").split("\n").map((l) => l.trim()).filter(Boolean);
  return lines.length ? lines[lines.length - 1] : "";
}

// -- rendering --------------------------------------------------------------------

function fraction(doc) {
  if (doc.state === "completed") return 1;
  const total = doc.total_nodes || 0;
  return total ? Math.min(1, (doc.processed || 0) / total) : 0;
}

function renderCard(entry) {
  const doc = entry.doc || entry.summary || {};
  const summary = entry.summary || {};
  const state = doc.state || summary.state || "starting";
  const taskId = entry.id;
  const final = FINAL_STATES.has(state);
  const card = entry.card;
  card.dataset.state = state;
  card.dataset.success = String(Boolean(doc.success) && state === "completed");

  const target = summary.target || "";
  const uiHome = doc.ui_home || summary.ui_home || "";
  const pct = Math.round(fraction(doc) * 100);

  const cancel = h("button", {
    class: "cancel",
    type: "button",
    disabled: final || entry.cancelling,
    onclick: () => cancelTask(entry),
  }, entry.cancelling ? "Cancelling…" : "Cancel");

  const head = h("div", {class: "card-head"},
    h("div", {class: "title"},
      h("span", {class: "target"}, target || "?"),
      h("span", {class: "ui-home"}, uiHome),
    ),
    h("div", {class: "meta"},
      state === "completed" && doc.failed
        ? h("span", {class: "badge s-failed"}, `completed · ${doc.failed} failed`)
        : badge(state),
      doc.stale ? h("span", {class: "stale", title: "the instance is unreachable; this is the last known progress"}, "stale") : null,
      state === "queued" && doc.queue_position
        ? h("span", {class: "queue", title: doc.queued_reason || ""}, `#${doc.queue_position} in line · ${(doc.queued_reason || "").replace(/_/g, " ")}`)
        : null,
      clock("elapsed", doc.started_at || summary.created_at, doc.finished_at),
      final ? null : cancel,
      final && retryable(doc) ? h("button", {class: "retry", type: "button", onclick: () => retryTask(entry)}, "Retry failed") : null,
      h("button", {class: "history-link", type: "button", title: "what was installed on this instance", onclick: () => showHistory(target)}, "History"),
    ),
  );

  const bar = h("div", {class: "overall"},
    h("div", {
      class: `bar${final && state !== "completed" ? " bad" : ""}${state === "completed" && doc.failed ? " bad" : ""}`,
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": String(pct),
    }, h("div", {class: "fill", style: `width: ${pct}%`})),
    h("span", {class: "count"}, `${doc.processed || 0}/${doc.total_nodes || 0} nodes · ${pct}%`),
  );

  const rows = (doc.nodes || []).map((node) => h("tr", {class: `node s-${node.status}`, "data-node": node.name},
    h("td", {class: "name", title: node.url || ""}, node.name),
    h("td", null, badge(node.status)),
    h("td", null, node.requirements_status && node.requirements_status !== "none" ? badge(node.requirements_status) : ""),
    h("td", null, clock("time", node.started_at, node.finished_at)),
    node.error
      ? h("td", {class: "error", title: node.error}, lastLine(node.error))
      : h("td", {class: "commit"}, (node.commit || "").slice(0, 10)),
  ));
  const table = rows.length
    ? h("table", {class: "nodes"},
        h("thead", null, h("tr", null, h("th", null, "node"), h("th", null, "status"), h("th", null, "requirements"), h("th", null, "time"), h("th", null, "commit / error"))),
        h("tbody", null, rows))
    : null;

  const footer = h("div", {class: "card-foot"},
    doc.has_requirements ? h("span", {class: "requirements"}, "requirements ", badge(doc.requirements_status)) : null,
    doc.error ? h("span", {class: "task-error"}, lastLine(doc.error)) : null,
    entry.message ? h("span", {class: "task-error"}, entry.message) : null,
    retryLinks(doc),
    h("span", {class: "task-id", title: "task id"}, taskId),
  );

  // The log box stays in place (moving it would reset its scroll position).
  entry.body.replaceChildren(head, bar, table || h("p", {class: "waiting"}, "waiting for the agent…"), footer);
}

function ensureEntry(taskId) {
  let entry = tasks.get(taskId);
  if (entry) return entry;
  const logText = h("pre", {class: "log-text"});
  const logBox = h("details", {class: "log"}, h("summary", null, "log"), logText);
  logBox.addEventListener("toggle", () => { if (logBox.open) refreshLog(entry); });
  const body = h("div", {class: "task-body"});
  entry = {
    id: taskId,
    doc: null,
    summary: null,
    card: h("article", {class: "task", "data-task-id": taskId}, body, logBox),
    body,
    logBox,
    logText,
    logOffset: 0,
    logTimer: null,
    watching: false,
    cancelling: false,
    message: "",
    sortKey: "",
  };
  tasks.set(taskId, entry);
  return entry;
}

function placeCards() {
  const container = document.getElementById("tasks");
  const ordered = [...tasks.values()].sort((a, b) => (a.sortKey < b.sortKey ? 1 : a.sortKey > b.sortKey ? -1 : 0));
  let previous = document.getElementById("empty");
  for (const entry of ordered) {
    if (previous.nextSibling !== entry.card) previous.after(entry.card);
    previous = entry.card;
  }
  document.getElementById("empty").hidden = tasks.size > 0;
}

// -- live updates -------------------------------------------------------------------

function setDoc(entry, doc) {
  entry.doc = doc;
  if (!entry.sortKey) entry.sortKey = doc.started_at || "";
  renderCard(entry);
  if (FINAL_STATES.has(doc.state)) {
    entry.cancelling = false;
    if (entry.logBox.open) refreshLog(entry);
  }
}

// Follow a task until it is final. For a task that is already final, the
// stream sends its one final event and ends.
async function watch(entry) {
  if (entry.watching) return;
  entry.watching = true;
  try {
    while (!(entry.doc && FINAL_STATES.has(entry.doc.state))) {
      if (openStreams >= MAX_STREAMS) {
        await pollOnce(entry);
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
        continue;
      }
      openStreams += 1;
      try {
        await streamEvents(entry.id, (_event, doc) => setDoc(entry, doc));
        // Ended without a final event (a controller restart): reconnect soon.
        if (!(entry.doc && FINAL_STATES.has(entry.doc.state))) {
          await new Promise((resolve) => setTimeout(resolve, RETRY_MS / 4));
        }
      } catch (error) {
        if (error instanceof HttpError && error.status === 404) {
          entry.message = "this controller no longer knows the task";
          renderCard(entry);
          return;
        }
        // A dropped stream: read once, then reconnect after a pause.
        await pollOnce(entry);
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      } finally {
        openStreams -= 1;
      }
    }
  } finally {
    entry.watching = false;
  }
}

async function pollOnce(entry) {
  try {
    setDoc(entry, await api("POST", "ssh/install-custom-nodes/progress", {task_id: entry.id}));
  } catch (error) {
    // 503 still carries the last known document.
    if (error.body && error.body.task_id === entry.id && error.body.state) setDoc(entry, error.body);
  }
}

async function refreshLog(entry) {
  clearTimeout(entry.logTimer);
  try {
    for (;;) {
      const chunk = await api("GET", `api/tasks/${encodeURIComponent(entry.id)}/log?offset=${entry.logOffset}`);
      if (chunk.data) {
        const text = (entry.logText.textContent + chunk.data).slice(-LOG_TAIL_CHARS);
        const atBottom = entry.logText.scrollTop + entry.logText.clientHeight >= entry.logText.scrollHeight - 8;
        entry.logText.textContent = text;
        if (atBottom) entry.logText.scrollTop = entry.logText.scrollHeight;
      }
      entry.logOffset = chunk.next_offset;
      if (chunk.eof || !chunk.data) break;
    }
  } catch (_) {
    // The tail is best effort; the next tick tries again.
  }
  const running = !(entry.doc && FINAL_STATES.has(entry.doc.state));
  if (entry.logBox.open && running) entry.logTimer = setTimeout(() => refreshLog(entry), LOG_REFRESH_MS);
}

// One listing at a time: a slow controller must not pile listings up (each is a
// query and a page of summaries); the timer's next tick tries again.
let listing = false;

async function refreshList() {
  if (listing) return;
  listing = true;
  try {
    await listOnce();
  } finally {
    listing = false;
  }
}

async function listOnce() {
  const status = document.getElementById("connection");
  try {
    const body = await api("GET", "api/tasks");
    status.dataset.state = "ok";
    status.textContent = "live";
    for (const task of body.tasks || []) {
      const taskId = task.task_id;
      if (!taskId) continue;
      const entry = ensureEntry(taskId);
      entry.summary = task;
      entry.sortKey = task.created_at || task.started_at || (task.progress && task.progress.started_at) || entry.sortKey;
      renderCard(entry);
      if (!entry.doc && !entry.watching) watch(entry);
    }
    placeCards();
  } catch (error) {
    status.dataset.state = "error";
    status.textContent = error instanceof HttpError ? error.message : "controller unreachable";
  }
}

async function cancelTask(entry) {
  entry.cancelling = true;
  entry.message = "";
  renderCard(entry);
  try {
    const doc = await api("POST", `api/tasks/${encodeURIComponent(entry.id)}/cancel`);
    if (doc && doc.state) setDoc(entry, doc);
  } catch (error) {
    entry.cancelling = false;
    entry.message = `cancel failed: ${error.message}`;
    renderCard(entry);
  }
}

// -- retries and history ------------------------------------------------------------

function retryable(doc) {
  if (doc.retried_by) return false;
  return (doc.nodes || []).some((n) => !["installed", "skipped"].includes(n.status));
}

function retryLinks(doc) {
  const parts = [];
  if (doc.attempt && doc.attempt > 1) parts.push(`attempt ${doc.attempt}`);
  if (doc.retry_of) parts.push(`retries ${doc.retry_of.slice(0, 8)}`);
  if (doc.retried_by) parts.push(`retried by ${doc.retried_by.slice(0, 8)}`);
  if (doc.auto_retry) parts.push(`${doc.auto_retry} auto retries left`);
  return parts.length ? h("span", {class: "retries"}, parts.join(" · ")) : null;
}

async function retryTask(entry) {
  entry.message = "";
  try {
    const answer = await api("POST", `api/tasks/${encodeURIComponent(entry.id)}/retry`, {queue: true});
    const next = ensureEntry(answer.task_id);
    next.summary = {...(entry.summary || {}), task_id: answer.task_id, state: answer.state};
    next.sortKey = new Date().toISOString();
    renderCard(next);
    placeCards();
    watch(next);
  } catch (error) {
    entry.message = `retry failed: ${error.message}`;
    renderCard(entry);
  }
}

async function showHistory(target) {
  const panel = document.getElementById("history-panel");
  const title = document.getElementById("history-title");
  const list = document.getElementById("history-list");
  panel.hidden = false;
  title.textContent = `History of ${target}`;
  list.replaceChildren(h("p", {class: "waiting"}, "loading…"));
  try {
    const query = new URLSearchParams({target, limit: "50"});
    const page = await api("GET", `api/history?${query}`);
    const rows = (page.tasks || []).map((t) => h("tr", {class: `s-${t.state}`},
      h("td", null, (t.finished_at || t.created_at || "").slice(0, 19).replace("T", " ")),
      h("td", {class: "ui-home"}, t.ui_home),
      h("td", null, badge(t.state)),
      h("td", null, `${t.successful || 0} installed, ${t.failed || 0} failed, ${t.skipped || 0} skipped`),
      h("td", {class: "history-nodes"}, (t.nodes || []).map((n) => `${n.name}${n.commit ? "@" + n.commit.slice(0, 7) : ""} ${n.status}${n.error_code ? " (" + n.error_code + ")" : ""}`).join(", ")),
      h("td", null, [t.retry_of ? `retries ${t.retry_of.slice(0, 8)}` : "", t.retried_by ? `retried by ${t.retried_by.slice(0, 8)}` : ""].filter(Boolean).join(" · ")),
      h("td", {class: "task-id"}, t.task_id.slice(0, 8)),
    ));
    list.replaceChildren(rows.length
      ? h("table", {class: "nodes history"},
          h("thead", null, h("tr", null, ...["when", "ComfyUI folder", "result", "counts", "nodes", "retry chain", "task"].map((c) => h("th", null, c)))),
          h("tbody", null, rows))
      : h("p", {class: "empty"}, "Nothing installed here yet."));
  } catch (error) {
    list.replaceChildren(h("p", {class: "task-error"}, error.message));
  }
}

// -- forms --------------------------------------------------------------------------

async function startInstall(event) {
  event.preventDefault();
  const form = event.target;
  const message = document.getElementById("start-message");
  const nodes = form.nodes.value.split("\n").map((l) => l.replace(/#.*/, "").trim()).filter(Boolean);
  const body = {
    ssh_connection: form.ssh_connection.value.trim(),
    ui_home: form.ui_home.value.trim(),
    nodes,
    update: form.update.checked,
  };
  const python = form.python.value.trim();
  if (python) body.python = python;
  const pipArgs = form.pip_args.value.trim();
  if (pipArgs) body.pip_args = pipArgs.split(/\s+/);
  if (form.queue && form.queue.checked) body.queue = true;
  const autoRetry = form.auto_retry ? parseInt(form.auto_retry.value, 10) : 0;
  if (autoRetry > 0) body.auto_retry = autoRetry;
  message.className = "message";
  message.textContent = "starting…";
  try {
    const answer = await api("POST", "ssh/install-custom-nodes", body);
    message.textContent = answer.state === "queued"
      ? `queued ${answer.task_id.slice(0, 8)} (#${answer.queue_position} in line)`
      : `started ${answer.task_id.slice(0, 8)}`;
    const entry = ensureEntry(answer.task_id);
    entry.summary = {task_id: answer.task_id, target: body.ssh_connection, ui_home: body.ui_home};
    entry.sortKey = new Date().toISOString();
    renderCard(entry);
    placeCards();
    watch(entry);
  } catch (error) {
    message.className = "message error";
    message.textContent = error.message;
  }
}

function askForToken() {
  document.getElementById("token-panel").hidden = false;
}

function init() {
  document.getElementById("start-form").addEventListener("submit", startInstall);
  document.getElementById("history-close").addEventListener("click", () => {
    document.getElementById("history-panel").hidden = true;
  });
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = event.target.token.value.trim();
    localStorage.setItem("nodeferry.token", token);
    document.getElementById("token-panel").hidden = true;
    refreshList();
  });
  refreshList();
  setInterval(refreshList, LIST_REFRESH_MS);
  // Running clocks tick even when nothing else changes.
  setInterval(() => {
    for (const el of document.querySelectorAll(".clock[data-start]:not([data-start=''])[data-end='']")) {
      el.textContent = duration(el.dataset.start, null);
    }
  }, 1000);
}

document.addEventListener("DOMContentLoaded", init);
