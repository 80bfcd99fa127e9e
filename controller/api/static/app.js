// The nodeferry dashboard: tasks newest first, every card live through one
// WebSocket (GET /api/ws), fleets grouped in one card. Plain DOM, no build step.
// Everything that came from an instance is set as text, never as HTML.
"use strict";

const FINAL_STATES = new Set(["completed", "failed", "cancelled", "lost"]);
const LOG_REFRESH_MS = 2000;
const LOG_TAIL_CHARS = 16000;
// Reconnect backoff: doubles from the first to the last, reset once connected.
const RECONNECT_FIRST_MS = 1000;
const RECONNECT_MAX_MS = 30000;
// A fleet's counts are fetched again this long after a member changed state.
const FLEET_REFRESH_MS = 300;
// The WebSocket's close code for a refused token.
const CLOSE_UNAUTHORIZED = 4401;

let socket = null;
let socketReady = false;
let reconnectMs = RECONNECT_FIRST_MS;
const fleets = new Map(); // fleet_id -> fleet entry (see ensureFleet)
const tasks = new Map(); // task_id -> entry (see ensureEntry)
let token = takeTokenFromUrl() || sessionStorage.getItem("nodeferry.token") || "";

// `nodeferry serve` prints `/#token=…`: a fragment never reaches a server (or its
// log). Keep the token for this tab only and take it out of the address bar
// (and so out of history).
function takeTokenFromUrl() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const given = fragment.get("token");
  if (!given) return "";
  sessionStorage.setItem("nodeferry.token", given);
  fragment.delete("token");
  const rest = fragment.toString();
  history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? `#${rest}` : ""));
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

// A node's import check (does it load as ComfyUI loads it?): "ok · 3 classes",
// "failed", "timeout", "skipped"; nothing before the check ran.
function importBadge(result) {
  if (!result || !result.status) return "";
  let text = result.status;
  if (result.status === "ok" && Number.isInteger(result.node_classes)) {
    text += ` · ${result.node_classes} class${result.node_classes === 1 ? "" : "es"}`;
  }
  const title = result.error || (result.seconds != null ? `${result.seconds} s` : null);
  return h("span", {class: `badge import i-${result.status}`, title}, text);
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
  card.dataset.ready = doc.ready ? (doc.ready.missing && doc.ready.missing.length ? "missing" : (doc.ready.classes == null ? "unknown" : "ok")) : "";

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
        : state === "completed" && doc.ready && (doc.ready.missing || []).length
          ? h("span", {class: "badge s-failed"}, `completed · ${doc.ready.missing.length} class(es) missing`)
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
    h("td", {class: "import-cell"}, importBadge(node.import)),
    h("td", null, clock("time", node.started_at, node.finished_at)),
    node.error
      ? h("td", {class: "error", title: node.error}, lastLine(node.error))
      : h("td", {class: "commit"}, (node.commit || "").slice(0, 10)),
  ));
  const table = rows.length
    ? h("table", {class: "nodes"},
        h("thead", null, h("tr", null, h("th", null, "node"), h("th", null, "status"), h("th", null, "requirements"), h("th", null, "import"), h("th", null, "time"), h("th", null, "commit / error"))),
        h("tbody", null, rows))
    : null;

  const footer = h("div", {class: "card-foot"},
    doc.plan ? planView(entry, doc, target, uiHome) : null,
    doc.has_requirements ? h("span", {class: "requirements"}, "requirements ", badge(doc.requirements_status)) : null,
    packageChanges(doc.packages),
    readyLine(doc),
    (doc.nodes || []).flatMap((node) => (node.warnings || []).map((warning) =>
      h("span", {class: "task-warning node-warning"}, `warning: ${node.name}: ${warning}`))),
    (doc.warnings || []).map((warning) => h("span", {class: "task-warning"}, `warning: ${warning}`)),
    doc.error ? h("span", {class: "task-error"}, lastLine(doc.error)) : null,
    doc.resolution && doc.resolution.unresolved.length
      ? h("span", {class: "resolution", title: "node classes no custom node provides"},
          `unresolved: ${doc.resolution.unresolved.join(", ")}`)
      : null,
    entry.message ? h("span", {class: "task-error"}, entry.message) : null,
    retryLinks(doc),
    h("span", {class: "task-id", title: "task id"}, taskId),
  );

  // The log box stays in place (moving it would reset its scroll position).
  entry.body.replaceChildren(head, bar, table || h("p", {class: "waiting"}, "waiting for the agent…"), footer);
}

// What the restarted (or running) ComfyUI said: the answer to "can I press Queue now?".
function readyLine(doc) {
  const ready = doc.ready;
  if (!ready) {
    return doc.state === "restarting"
      ? h("span", {class: "ready busy"}, `ComfyUI: ${doc.current_status || "restarting"}…`)
      : null;
  }
  if (ready.classes === null || ready.classes === undefined) {
    return h("span", {class: "ready unknown"}, `ComfyUI: ${ready.note || "did not answer"}`);
  }
  const missing = ready.missing || [];
  let how = ready.restarted_by ? `restarted by ${ready.restarted_by}` : "running";
  if (ready.service) how += ` (${ready.service})`;
  if (ready.pid) how += `, pid ${ready.pid}`;
  const what = missing.length ? `missing ${missing.join(", ")}` : "every workflow class present";
  return h("span", {class: `ready ${missing.length ? "bad" : "good"}`, "data-missing": missing.join(",")},
    `ComfyUI: ${how}, ${ready.classes} classes, ${what} (${Number(ready.seconds || 0).toFixed(1)}s)`);
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
    subscribed: false,
    fleetId: null,
    lastState: "",
    cancelling: false,
    message: "",
    sortKey: "",
  };
  tasks.set(taskId, entry);
  return entry;
}

// Top-level cards, newest first: tasks on their own, and one card per fleet
// holding its members (themselves newest first).
function placeCards() {
  const byKey = (a, b) => (a.sortKey < b.sortKey ? 1 : a.sortKey > b.sortKey ? -1 : 0);
  const top = [];
  for (const fleet of fleets.values()) fleet.members = [];
  for (const entry of tasks.values()) {
    const fleet = entry.fleetId ? ensureFleet(entry.fleetId) : null;
    if (fleet) {
      fleet.members.push(entry);
      if (entry.sortKey > fleet.sortKey) fleet.sortKey = entry.sortKey;
    } else {
      top.push(entry);
    }
  }
  for (const fleet of fleets.values()) {
    if (!fleet.members.length) continue;
    fleet.members.sort(byKey);
    let previous = null;
    for (const member of fleet.members) {
      if (previous === null ? fleet.list.firstChild !== member.card : previous.nextSibling !== member.card) {
        if (previous === null) fleet.list.prepend(member.card);
        else previous.after(member.card);
      }
      previous = member.card;
    }
    top.push(fleet);
  }
  top.sort(byKey);
  let previous = document.getElementById("empty");
  for (const item of top) {
    if (previous.nextSibling !== item.card) previous.after(item.card);
    previous = item.card;
  }
  document.getElementById("empty").hidden = tasks.size > 0;
}

// -- fleets -------------------------------------------------------------------------

function ensureFleet(fleetId) {
  let fleet = fleets.get(fleetId);
  if (fleet) return fleet;
  const head = h("div", {class: "card-head"});
  const list = h("div", {class: "fleet-members"});
  fleet = {
    id: fleetId,
    doc: null,
    sortKey: "",
    members: [],
    timer: null,
    head,
    list,
    card: h("article", {class: "fleet", "data-fleet-id": fleetId}, head, list),
  };
  fleets.set(fleetId, fleet);
  renderFleet(fleet);
  refreshFleet(fleet);
  return fleet;
}

function renderFleet(fleet) {
  const doc = fleet.doc || {};
  const state = doc.state || "running";
  fleet.card.dataset.state = state;
  const count = (name, value) => h("span", {class: `fleet-count c-${name}`}, `${value ?? "?"} ${name}`);
  fleet.head.replaceChildren(
    h("div", {class: "title"},
      h("span", {class: "target"}, `fleet · ${doc.instances ?? fleet.members.length} instances`),
      h("span", {class: "ui-home"}, fleet.id),
    ),
    h("div", {class: "meta"},
      badge(state),
      count("running", doc.running), count("completed", doc.completed), count("failed", doc.failed),
      state === "running" ? h("button", {class: "cancel", type: "button", onclick: () => cancelFleet(fleet)}, "Cancel all") : null,
    ),
  );
}

async function refreshFleet(fleet) {
  try {
    fleet.doc = await api("GET", `api/fleet/${encodeURIComponent(fleet.id)}`);
    renderFleet(fleet);
  } catch (_) {
    // Counts are refreshed on the next member change.
  }
}

function fleetChanged(fleetId) {
  const fleet = fleets.get(fleetId);
  if (!fleet) return;
  clearTimeout(fleet.timer);
  fleet.timer = setTimeout(() => refreshFleet(fleet), FLEET_REFRESH_MS);
}

async function cancelFleet(fleet) {
  try {
    fleet.doc = await api("POST", `api/fleet/${encodeURIComponent(fleet.id)}/cancel`);
    renderFleet(fleet);
  } catch (error) {
    fleet.head.append(h("span", {class: "task-error"}, `cancel failed: ${error.message}`));
  }
}

// -- live updates -------------------------------------------------------------------

function setDoc(entry, doc) {
  entry.doc = doc;
  if (!entry.sortKey) entry.sortKey = doc.started_at || "";
  renderCard(entry);
  if (doc.state !== entry.lastState) {
    entry.lastState = doc.state;
    if (entry.fleetId) fleetChanged(entry.fleetId);
  }
  if (FINAL_STATES.has(doc.state)) {
    entry.cancelling = false;
    if (entry.logBox.open) refreshLog(entry);
  }
}

// -- the socket -----------------------------------------------------------------------
// One WebSocket carries every card: the task list and each task's progress. A
// browser opens only about six HTTP connections per host, so one event stream
// per card would stop being live beyond a handful of installs.

function socketUrl() {
  const url = new URL("api/ws", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

function send(message) {
  if (socket && socketReady) socket.send(JSON.stringify(message));
}

function setConnection(state, text) {
  const status = document.getElementById("connection");
  status.dataset.state = state;
  status.textContent = text;
}

function connect() {
  if (socket) return;
  const ws = new WebSocket(socketUrl());
  socket = ws;
  socketReady = false;
  // The token travels in the first message, not in the URL (logs, history).
  ws.addEventListener("open", () => ws.send(JSON.stringify({op: "auth", token})));
  ws.addEventListener("message", (event) => {
    let message = null;
    try {
      message = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    onMessage(message);
  });
  ws.addEventListener("close", (event) => {
    if (socket !== ws) return;
    socket = null;
    socketReady = false;
    for (const entry of tasks.values()) entry.subscribed = false;
    if (event.code === CLOSE_UNAUTHORIZED) {
      setConnection("error", "API token needed");
      askForToken(); // the token form reconnects
      return;
    }
    setConnection("error", `reconnecting in ${Math.round(reconnectMs / 1000)} s…`);
    setTimeout(connect, reconnectMs);
    reconnectMs = Math.min(reconnectMs * 2, RECONNECT_MAX_MS);
  });
}

function onMessage(message) {
  switch (message.type) {
    case "ready":
      socketReady = true;
      reconnectMs = RECONNECT_FIRST_MS;
      send({op: "subscribe", tasks: "all"});
      for (const entry of tasks.values()) follow(entry);
      break;
    case "tasks":
      setConnection("ok", "live");
      for (const task of message.tasks || []) upsertSummary(task);
      placeCards();
      break;
    case "task":
      upsertSummary(message.task);
      placeCards();
      break;
    case "task_removed": {
      const entry = tasks.get(message.task_id);
      if (entry) {
        entry.card.remove();
        tasks.delete(message.task_id);
        placeCards();
      }
      break;
    }
    case "progress":
    case "final": {
      const entry = tasks.get(message.task_id);
      if (!entry) break;
      if (message.type === "final") entry.subscribed = false;
      setDoc(entry, message.progress);
      break;
    }
    case "error": {
      const entry = message.task_id ? tasks.get(message.task_id) : null;
      if (entry) {
        entry.subscribed = false;
        entry.message = message.error === "unknown_task" ? "this controller no longer knows the task" : message.message;
        renderCard(entry);
      } else if (message.error === "unauthorized") {
        askForToken();
      }
      break;
    }
    default:
      break;
  }
}

function upsertSummary(task) {
  if (!task || !task.task_id) return;
  const entry = ensureEntry(task.task_id);
  entry.summary = task;
  entry.sortKey = task.created_at || entry.sortKey;
  entry.fleetId = task.fleet_id || entry.fleetId;
  renderCard(entry);
  follow(entry);
}

// Subscribe to a task until its final message; a final task still sends that
// one message, with the full document for its card.
function follow(entry) {
  if (!socketReady || entry.subscribed) return;
  if (entry.doc && FINAL_STATES.has(entry.doc.state)) return;
  entry.subscribed = true;
  send({op: "subscribe", task_id: entry.id});
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

// -- plans (issue 30) ----------------------------------------------------------------

// The plan's answer as the CLI prints it: the interpreter, each node's action, each
// package change with what requires it, and a button that applies exactly this plan.
function planView(entry, doc, target, uiHome) {
  const plan = doc.plan;
  const who = plan.interpreter || {};
  const nodes = (plan.nodes || []).map((n) => h("tr", {class: `plan-node a-${n.action}`},
    h("td", null, n.name), h("td", null, n.action),
    h("td", {class: "commit"}, (n.from || "").slice(0, 10)),
    h("td", {class: "commit"}, (n.to || n.error || "").slice(0, 60))));
  const reasons = plan.reasons || {};
  const packages = ["downgraded", "removed", "upgraded", "added"].flatMap((kind) =>
    Object.entries((plan.packages || {})[kind] || {}).map(([name, [old, now]]) =>
      h("tr", {class: `plan-package k-${kind}`},
        h("td", null, name), h("td", null, kind), h("td", null, old || ""), h("td", null, now || ""),
        h("td", null, (reasons[name] || []).join("; ") || "(a dependency)"))));
  const applicable = doc.state === "completed" && ((plan.apply || {}).nodes || []).length > 0;
  return h("div", {class: "plan"},
    h("div", {class: "plan-interpreter"}, `interpreter ${who.path} (chosen by ${who.chosen_by})`),
    (who.mismatch || []).map((line) => h("div", {class: "task-warning"}, `⚠ ${line}`)),
    h("table", {class: "plan-nodes"},
      h("thead", null, h("tr", null, h("th", null, "node"), h("th", null, "action"), h("th", null, "from"), h("th", null, "to"))),
      h("tbody", null, nodes)),
    packages.length
      ? h("table", {class: "plan-packages"},
          h("thead", null, h("tr", null, h("th", null, "package"), h("th", null, "change"), h("th", null, "from"), h("th", null, "to"), h("th", null, "required by"))),
          h("tbody", null, packages))
      : h("div", {class: "plan-none"}, "packages: no changes"),
    (plan.culprits || []).map((c) => h("div", {class: "task-error"}, `${c.node} would be dropped: ${c.conflict}`)),
    (plan.install_scripts || []).length
      ? h("div", null, `install.py would run: ${plan.install_scripts.join(", ")}`) : null,
    (plan.violations || []).map((v) => h("div", {class: "task-error"}, `policy: ${v}`)),
    h("div", {class: "hint"}, `downloads: ${(plan.downloads || {}).count || 0} package(s) · installer ${plan.installer || "none needed"}`),
    applicable
      ? h("button", {class: "apply", type: "button", onclick: () => applyPlan(entry, target, uiHome)}, "Apply this plan")
      : null,
  );
}

async function applyPlan(entry, target, uiHome) {
  entry.message = "";
  try {
    const answer = await api("POST", "ssh/install-custom-nodes", {ssh_connection: target, ui_home: uiHome, plan: entry.id});
    const next = ensureEntry(answer.task_id);
    next.summary = {task_id: answer.task_id, target, ui_home: uiHome, state: answer.state};
    next.sortKey = new Date().toISOString();
    renderCard(next);
    placeCards();
    follow(next);
  } catch (error) {
    entry.message = `apply failed: ${error.message}`;
    renderCard(entry);
  }
}

// "packages: 3 added, 1 downgraded" with every change in the tooltip.
function packageChanges(packages) {
  const kinds = Object.keys(packages || {}).filter((kind) => Object.keys(packages[kind]).length);
  if (!kinds.length) return null;
  const counts = kinds.map((kind) => `${Object.keys(packages[kind]).length} ${kind}`).join(", ");
  const detail = kinds.flatMap((kind) => Object.entries(packages[kind]).map(
    ([name, [old, now]]) => `${kind} ${name} ${old || "—"} → ${now || "—"}`)).join("\n");
  return h("span", {class: "packages", title: detail}, `packages: ${counts}`);
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
  // The Plan button sends the same request to api/plan: nothing is changed.
  const planning = Boolean(event.submitter && event.submitter.name === "plan");
  const message = document.getElementById("start-message");
  const nodes = form.nodes.value.split("\n").map((l) => l.replace(/#.*/, "").trim()).filter(Boolean);
  const body = {
    ssh_connection: form.ssh_connection.value.trim(),
    ui_home: form.ui_home.value.trim(),
    update: form.update.checked,
  };
  // Nothing named: the controller installs its default_nodes (or says how to name some).
  if (nodes.length) body.nodes = nodes;
  if (droppedWorkflow) body.workflow = droppedWorkflow;
  if (form.strict.checked) body.strict = true;
  const python = form.python.value.trim();
  if (python) body.python = python;
  const pipArgs = form.pip_args.value.trim();
  if (pipArgs) body.pip_args = pipArgs.split(/\s+/);
  if (form.queue && form.queue.checked) body.queue = true;
  if (form.restart && form.restart.checked) body.restart = "auto";
  const autoRetry = form.auto_retry ? parseInt(form.auto_retry.value, 10) : 0;
  if (autoRetry > 0) body.auto_retry = autoRetry;
  message.className = "message";
  message.textContent = planning ? "planning…" : "starting…";
  try {
    const answer = await api("POST", planning ? "api/plan" : "ssh/install-custom-nodes", body);
    message.textContent = answer.state === "queued"
      ? `queued ${answer.task_id.slice(0, 8)} (#${answer.queue_position} in line)`
      : `started ${answer.task_id.slice(0, 8)}`;
    const entry = ensureEntry(answer.task_id);
    entry.summary = {task_id: answer.task_id, target: body.ssh_connection, ui_home: body.ui_home};
    entry.sortKey = new Date().toISOString();
    renderCard(entry);
    placeCards();
    follow(entry);
  } catch (error) {
    message.className = "message error";
    message.textContent = error.message;
  }
}

// -- a dropped workflow (issue 10) ---------------------------------------------------

let droppedWorkflow = null;

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// The "workflow" (else "prompt") text chunk of a PNG ComfyUI saved: tEXt, zTXt or iTXt.
async function pngWorkflow(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const found = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const kind = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const body = bytes.subarray(offset + 8, offset + 8 + length);
    offset += 12 + length;
    if (kind === "IEND") break;
    if (kind !== "tEXt" && kind !== "zTXt" && kind !== "iTXt") continue;
    const nul = body.indexOf(0);
    if (nul < 0) continue;
    const key = latin1.decode(body.subarray(0, nul));
    if ((key !== "workflow" && key !== "prompt") || found[key]) continue;
    let rest = body.subarray(nul + 1);
    if (kind === "tEXt") found[key] = latin1.decode(rest);
    else if (kind === "zTXt") found[key] = latin1.decode(await inflate(rest.subarray(1)));
    else {
      const compressed = rest[0] === 1;
      rest = rest.subarray(2);
      rest = rest.subarray(rest.indexOf(0) + 1);  // language tag
      rest = rest.subarray(rest.indexOf(0) + 1);  // translated keyword
      found[key] = new TextDecoder().decode(compressed ? await inflate(rest) : rest);
    }
  }
  const text = found.workflow || found.prompt;
  if (!text) throw new Error("this PNG carries no ComfyUI workflow");
  return text;
}

async function loadWorkflow(file) {
  const status = document.getElementById("workflow-status");
  droppedWorkflow = null;
  status.className = "hint";
  try {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const isPng = bytes.length > 8 && bytes[0] === 0x89 && bytes[1] === 0x50;
    const text = isPng ? await pngWorkflow(bytes) : new TextDecoder().decode(bytes);
    const data = JSON.parse(text);
    if (!data || typeof data !== "object" || Array.isArray(data)) throw new Error("not a workflow object");
    droppedWorkflow = data;
    const count = Array.isArray(data.nodes) ? data.nodes.length : Object.keys(data).length;
    status.textContent = `${file.name}: ${count} nodes, resolved when you start`;
  } catch (error) {
    status.className = "hint error";
    status.textContent = `${file.name}: ${error.message}`;
  }
}

function setupWorkflowDrop() {
  const zone = document.getElementById("workflow-drop");
  const input = zone.querySelector("input[type=file]");
  input.addEventListener("change", () => { if (input.files[0]) loadWorkflow(input.files[0]); });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) loadWorkflow(file);
  });
}

function askForToken() {
  document.getElementById("token-panel").hidden = false;
}

function init() {
  document.getElementById("start-form").addEventListener("submit", startInstall);
  const planButton = document.getElementById("plan-button");
  planButton.addEventListener("click", () => {
    const form = document.getElementById("start-form");
    if (form.reportValidity()) startInstall({preventDefault() {}, target: form, submitter: planButton});
  });
  setupWorkflowDrop();
  document.getElementById("history-close").addEventListener("click", () => {
    document.getElementById("history-panel").hidden = true;
  });
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = event.target.token.value.trim();
    sessionStorage.setItem("nodeferry.token", token);
    document.getElementById("token-panel").hidden = true;
    reconnectMs = RECONNECT_FIRST_MS;
    if (socket) socket.close();
    else connect();
  });
  connect();
  // Running clocks tick even when nothing else changes.
  setInterval(() => {
    for (const el of document.querySelectorAll(".clock[data-start]:not([data-start=''])[data-end='']")) {
      el.textContent = duration(el.dataset.start, null);
    }
  }, 1000);
}

document.addEventListener("DOMContentLoaded", init);
