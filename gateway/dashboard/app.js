// emit dashboard: one module, no framework, no build step. It speaks the
// same REST and WebSocket API as every client, authenticated by the session
// cookie; every change carries the session's CSRF token. Untrusted text is
// only ever set as text (never parsed as HTML).

const STATUSES = ["scheduled", "pending", "delivered", "running", "completed", "dead", "killed"];
const FINISHED = new Set(["completed", "dead", "killed"]);
const SCOPES = [
  "jobs:create", "jobs:read", "jobs:poll", "jobs:ack", "jobs:progress", "jobs:event",
  "jobs:complete", "jobs:fail", "jobs:keepalive", "jobs:kill", "jobs:retry", "jobs:delete",
  "jobs:read:progress", "jobs:read:space",
];
const WORKER_PRESET = [
  "jobs:read", "jobs:poll", "jobs:ack", "jobs:progress", "jobs:event",
  "jobs:complete", "jobs:fail", "jobs:keepalive", "jobs:read:progress",
];
const SLACK_EVENTS = ["created", "started", "completed", "failed", "dead", "killed"];
const LOG_LEVELS = ["debug", "info", "warn", "error"];
const PAGE = 50;
// Rows the live job list keeps; older ones are dropped and paged back in.
const MAX_ROWS = 500;
// Messages arriving within this window are rendered together.
const COALESCE_MS = 16;

let session = null;
let teardown = [];
const main = document.getElementById("main");
const top = document.getElementById("top");

// ---- DOM and HTTP helpers ------------------------------------------------

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "value") node.value = value;
    else if (key === "checked") node.checked = true;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && session) headers["x-csrf-token"] = session.csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: text }; }
  }
  if (!response.ok) {
    if (response.status === 401 && session) {
      session = null;
      queueMicrotask(route);
    }
    throw new ApiError(response.status, (data && data.error) || response.statusText);
  }
  return { data, headers: response.headers };
}

function toast(message) {
  const box = document.getElementById("toast");
  const note = h("div", { text: message });
  box.append(note);
  setTimeout(() => note.remove(), 5000);
}

function failed(error) {
  toast(error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`);
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function ago(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size || unit === "second") {
      return relative.format(Math.round(seconds / size), unit);
    }
  }
  return "";
}

// A timestamp in the viewer's time zone, shown relative, exact on hover.
function when(iso) {
  if (!iso) return h("span", { class: "hint", text: "—" });
  const at = new Date(iso);
  return h("time", { datetime: iso, title: absolute.format(at), "data-relative": "" }, ago(iso));
}

setInterval(() => {
  for (const node of document.querySelectorAll("time[data-relative]")) {
    node.textContent = ago(node.getAttribute("datetime"));
  }
}, 15000);

function statusBadge(status) {
  return h("span", { class: `status ${status}`, "data-status": status }, status);
}

// Why a ready job is held back (its key's slots, its name's rate, a pause).
const WAITING = { concurrency_limit: "key at its limit", rate_limit: "rate limit reached", paused: "paused" };
function waiting(job) {
  if (!job.waitingReason) return "";
  return h("span", { class: "hint waiting", text: ` · ${WAITING[job.waitingReason] || job.waitingReason}` });
}

function json(value) {
  return h("pre", { class: "mono" }, JSON.stringify(value, null, 2));
}

function bar(percent, label) {
  const clamped = Math.max(0, Math.min(100, Number(percent) || 0));
  return h("div", {
    class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
    "aria-valuenow": String(clamped), "aria-label": label,
  }, h("span", { style: `width:${clamped}%` }));
}

function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

function onTeardown(fn) {
  teardown.push(fn);
}

// ---- Live streams --------------------------------------------------------

// A WebSocket that reconnects with backoff and hands over its messages in
// batches (one render per batch, however fast they arrive).
class LiveSocket {
  constructor(path, onBatch, onState) {
    this.path = path;
    this.onBatch = onBatch;
    this.onState = onState || (() => {});
    this.queue = [];
    this.timer = null;
    this.closed = false;
    this.backoff = 250;
    this.connect();
  }

  url() {
    return wsUrl(this.path);
  }

  connect() {
    if (this.closed) return;
    const socket = new WebSocket(this.url());
    this.socket = socket;
    // Live from the server's first message (`connected` or `init`), which
    // carries the state the page starts from.
    socket.onmessage = (message) => {
      if (!this.live) {
        this.live = true;
        this.backoff = 250;
        this.onState(true);
      }
      try { this.queue.push(JSON.parse(message.data)); } catch { return; }
      if (!this.timer) this.timer = setTimeout(() => this.flush(), COALESCE_MS);
    };
    socket.onclose = () => {
      this.live = false;
      this.onState(false);
      if (this.closed) return;
      setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    };
  }

  flush() {
    this.timer = null;
    const batch = this.queue;
    this.queue = [];
    if (batch.length) this.onBatch(batch);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close();
  }
}

// The space stream: keeps the reconnect cursor (seq + streamInstanceId),
// takes the server's counts as they come, and asks for a revalidation when
// the server says events were missed.
class SpaceStream extends LiveSocket {
  constructor(spaceId, { onCounts, onEvents, onRevalidate, onState }) {
    super(null, (batch) => this.take(batch), onState);
    this.spaceId = spaceId;
    this.onCounts = onCounts || (() => {});
    this.onEvents = onEvents || (() => {});
    this.onRevalidate = onRevalidate || (() => {});
  }

  url() {
    const params = new URLSearchParams();
    if (this.seq !== undefined) params.set("since", String(this.seq));
    if (this.instance) params.set("streamInstanceId", this.instance);
    const query = params.toString();
    return wsUrl(`/api/v1/realtime/spaces/${encodeURIComponent(this.spaceId)}${query ? `?${query}` : ""}`);
  }

  take(batch) {
    let counts = null;
    let revalidate = false;
    const events = [];
    for (const message of batch) {
      if (typeof message.seq === "number") this.seq = message.seq;
      if (typeof message.streamInstanceId === "string") this.instance = message.streamInstanceId;
      if (message.counts) counts = message.counts;
      if (message.type === "connected") {
        if (message.missed) revalidate = true;
      } else {
        events.push(message);
      }
    }
    if (revalidate) this.onRevalidate();
    else if (events.length) this.onEvents(events);
    if (counts) this.onCounts(counts);
  }
}

// ---- Session, layout and routing -----------------------------------------

function signIn() {
  top.replaceChildren();
  const error = h("p", { class: "error", role: "alert" });
  const key = h("input", { id: "key", type: "password", autocomplete: "current-password", required: true, spellcheck: "false" });
  const form = h("form", {
    class: "card",
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      try {
        const response = await fetch("/dashboard/api/session", {
          method: "POST",
          credentials: "same-origin",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ key: key.value }),
        });
        const data = await response.json().catch(() => ({}));
        if (!response.ok) throw new Error(data.error || response.statusText);
        session = data;
        key.value = "";
        if (!location.hash || location.hash === "#/signin") location.hash = "#/";
        route();
      } catch (failure) {
        error.textContent = failure.message;
      }
    },
  },
    h("h1", { text: "Sign in to emit" }),
    h("label", { for: "key", text: "API key" }),
    key,
    h("p", { class: "hint", text: "The admin key was printed when the server first started. A space key holding jobs:read signs in to a read-only view of its space." }),
    error,
    h("button", { class: "primary", type: "submit", text: "Sign in" }),
  );
  main.replaceChildren(h("div", { class: "signin" }, form));
  key.focus();
}

async function signOut() {
  try { await api("DELETE", "/dashboard/api/session"); } catch (error) { failed(error); }
  session = null;
  route();
}

function header(spaceId, current) {
  const link = (href, label, name) =>
    h("a", { href, "aria-current": current === name ? "page" : undefined, text: label });
  const links = [link("#/", "Home", "home")];
  if (session.admin) links.push(link("#/spaces", "Spaces", "spaces"));
  if (spaceId) {
    const base = `#/spaces/${encodeURIComponent(spaceId)}`;
    links.push(link(`${base}/jobs`, "Jobs", "jobs"));
    if (session.admin) {
      links.push(link(`${base}/tokens`, "Tokens", "tokens"));
      links.push(link(`${base}/settings`, "Settings", "settings"));
    }
  }
  const who = session.admin ? "Signed in with the admin key" : "Read-only view of one space";
  top.replaceChildren(
    h("a", { class: "brand", href: "#/", text: "emit" }),
    h("nav", { "aria-label": "Main" }, links),
    h("div", { class: "who" }, h("span", { text: who }), h("button", { id: "sign-out", onclick: signOut, text: "Sign out" })),
  );
}

function parseHash() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

async function route() {
  for (const fn of teardown) fn();
  teardown = [];
  if (!session) {
    try {
      session = (await api("GET", "/dashboard/api/session")).data;
    } catch {
      session = null;
    }
  }
  if (!session) return signIn();
  const { parts, params } = parseHash();
  const view = h("div");
  main.replaceChildren(view);
  try {
    if (parts[0] === "spaces" && parts[1]) {
      const page = parts[2] || "jobs";
      header(parts[1], page);
      if (page === "tokens") await tokensView(view, parts[1]);
      else if (page === "settings") await settingsView(view, parts[1]);
      else await jobsView(view, parts[1], params);
    } else if (parts[0] === "spaces") {
      header(null, "spaces");
      await spacesView(view);
    } else if (parts[0] === "jobs" && parts[1]) {
      header(params.get("space"), "jobs");
      await jobView(view, parts[1]);
    } else {
      header(session.admin ? null : session.spaceId, "home");
      await homeView(view);
    }
  } catch (error) {
    if (session) view.replaceChildren(h("p", { class: "error", role: "alert", text: error.message }));
  }
}

// ---- Home and spaces -----------------------------------------------------

// Space settings are the admin's: a read-only session knows its space by id.
async function space(spaceId) {
  if (session.admin) return (await api("GET", `/api/v1/spaces/${encodeURIComponent(spaceId)}`)).data;
  return { id: spaceId, name: `Space ${spaceId}` };
}

async function spaces() {
  if (session.admin) return (await api("GET", "/api/v1/spaces")).data;
  return [await space(session.spaceId)];
}

function countsList(spaceId, counts, selected) {
  return h("div", { class: "counts", "aria-label": "Jobs by status" }, STATUSES.map((status) => {
    const count = counts ? counts[status] ?? 0 : "…";
    const href = `#/spaces/${encodeURIComponent(spaceId)}/jobs?status=${status}`;
    return h("a", { href, "data-count": status, "aria-current": selected === status ? "true" : undefined },
      status, h("b", { text: String(count) }));
  }));
}

// Spaces whose counts the home page follows live; the rest show a link.
const LIVE_SPACES = 24;

async function homeView(view) {
  const list = await spaces();
  view.append(h("h1", { text: "Overview" }));
  if (!list.length) {
    view.append(h("div", { class: "empty" },
      h("p", { text: "No spaces yet. A space holds jobs, tokens and settings for one application." }),
      h("a", { class: "button", href: "#/spaces", text: "Create a space" })));
    return;
  }
  const cards = h("div", { class: "cards" });
  view.append(cards);
  list.forEach((space, index) => {
    const counts = h("div", { text: index < LIVE_SPACES ? "Connecting…" : "" });
    const card = h("section", { class: "card", "data-space": space.id, "aria-label": space.name },
      h("h2", {}, h("a", { href: `#/spaces/${encodeURIComponent(space.id)}/jobs`, text: space.name })),
      h("p", { class: "hint mono", text: space.id }),
      counts);
    cards.append(card);
    if (index < LIVE_SPACES) {
      const stream = new SpaceStream(space.id, {
        onCounts: (latest) => counts.replaceChildren(countsList(space.id, latest)),
      });
      onTeardown(() => stream.close());
    }
  });
}

async function spacesView(view) {
  const list = await spaces();
  const name = h("input", { id: "space-name", required: true, maxlength: "200", autocomplete: "off" });
  view.append(
    h("h1", { text: "Spaces" }),
    h("form", {
      class: "card row",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const space = (await api("POST", "/api/v1/spaces", { name: name.value })).data;
          toast(`Space ${space.name} created`);
          location.hash = `#/spaces/${encodeURIComponent(space.id)}/jobs`;
        } catch (error) { failed(error); }
      },
    }, h("div", {}, h("label", { for: "space-name", text: "New space name" }), name),
      h("button", { class: "primary", type: "submit", text: "Create space" })),
  );
  if (!list.length) {
    view.append(h("div", { class: "empty", text: "No spaces yet: name one above to create it." }));
    return;
  }
  view.append(h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", { text: "Name" }), h("th", { text: "Id" }), h("th", { class: "optional", text: "Created" }))),
    h("tbody", {}, list.map((space) => h("tr", {},
      h("td", {}, h("a", { href: `#/spaces/${encodeURIComponent(space.id)}/jobs`, text: space.name })),
      h("td", { class: "mono", text: space.id }),
      h("td", { class: "optional" }, when(space.createdAt))))))));
}

// ---- Jobs of one space ---------------------------------------------------

async function jobsView(view, spaceId, params) {
  const status = params.get("status") || "";
  const name = params.get("name") || "";
  const shown = await space(spaceId);
  const spaceName = shown.name;
  // The admin may pause and resume the space's dispatch from here.
  const pauseButton = session.admin
    ? h("button", {
      id: "pause",
      onclick: async () => {
        const action = shown.paused ? "resume" : "pause";
        try {
          const changed = (await api("POST", `/api/v1/spaces/${encodeURIComponent(spaceId)}/${action}`, {})).data;
          shown.paused = changed.paused;
          pauseButton.textContent = shown.paused ? "Resume dispatch" : "Pause dispatch";
          pausedNote.hidden = !shown.paused;
          toast(shown.paused ? "Dispatch paused: jobs are accepted but not handed out" : "Dispatch resumed");
        } catch (error) { failed(error); }
      },
      text: shown.paused ? "Resume dispatch" : "Pause dispatch",
    })
    : null;
  const pausedNote = h("p", { class: "secret", id: "paused-note", hidden: !shown.paused },
    "Dispatch of this space is paused: new jobs are accepted and wait.");
  const base = `#/spaces/${encodeURIComponent(spaceId)}/jobs`;
  const live = h("span", { class: "live", id: "live", text: "Connecting" });
  const counts = h("div", {}, countsList(spaceId, null, status));
  const statusSelect = h("select", { id: "status-filter" },
    h("option", { value: "", text: "Any status" }),
    STATUSES.map((s) => h("option", { value: s, text: s, selected: s === status ? true : undefined })));
  statusSelect.value = status;
  const nameInput = h("input", { id: "name-filter", value: name, autocomplete: "off", placeholder: "e.g. send-email" });
  const idInput = h("input", { id: "job-id", autocomplete: "off", placeholder: "01J…", class: "mono" });
  const filter = h("form", {
    class: "row card", role: "search",
    onsubmit: (event) => {
      event.preventDefault();
      const query = new URLSearchParams();
      if (statusSelect.value) query.set("status", statusSelect.value);
      if (nameInput.value.trim()) query.set("name", nameInput.value.trim());
      location.hash = `${base}${query.toString() ? `?${query}` : ""}`;
    },
  },
    h("div", {}, h("label", { for: "status-filter", text: "Status" }), statusSelect),
    h("div", {}, h("label", { for: "name-filter", text: "Job name" }), nameInput),
    h("button", { type: "submit", text: "Filter" }),
    status || name ? h("a", { class: "button", href: base, text: "Clear" }) : null,
  );
  const find = h("form", {
    class: "row card",
    onsubmit: (event) => {
      event.preventDefault();
      const id = idInput.value.trim();
      if (id) location.hash = `#/jobs/${encodeURIComponent(id)}?space=${encodeURIComponent(spaceId)}`;
    },
  }, h("div", {}, h("label", { for: "job-id", text: "Find a job by id" }), idInput), h("button", { type: "submit", text: "Open" }));

  const tbody = h("tbody", { id: "jobs" });
  const table = h("div", { class: "table-wrap" }, h("table", {},
    h("caption", { class: "hint", style: "caption-side:bottom;text-align:left;padding:.4rem .6rem" }, ""),
    h("thead", {}, h("tr", {},
      ["Id", "Name", "Status", "Progress"].map((label) => h("th", { scope: "col", text: label })),
      h("th", { scope: "col", class: "optional", text: "Created" }),
      h("th", { scope: "col", class: "optional", text: "Updated" }))),
    tbody));
  const empty = h("div", { class: "empty", hidden: true },
    status || name
      ? "No jobs match this filter. Clear it, or wait: matching jobs appear here as they are created."
      : "No jobs yet. Create one with POST /api/v1/spaces/" + spaceId + "/jobs; it appears here at once.");
  const older = h("button", { id: "older", hidden: true, text: "Load older jobs" });
  view.append(h("div", { class: "row", style: "justify-content:space-between" }, h("h1", { text: spaceName }), h("div", { class: "row" }, pauseButton, live)), pausedNote,
    counts, filter, find, table, empty, h("p", {}, older));

  // id -> { row, job }; `cursor` is the oldest row's id (paging back).
  const rows = new Map();
  let cursor = null;

  const matches = (job) => (!status || job.status === status) && (!name || job.name === name);

  function cells(job) {
    const progress = job.progress && typeof job.progress.percent === "number" ? job.progress : null;
    return [
      h("td", { class: "id mono" }, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}?space=${encodeURIComponent(spaceId)}`, text: job.id })),
      h("td", { text: job.name }),
      h("td", {}, statusBadge(job.status), waiting(job)),
      h("td", {}, progress ? h("div", {}, bar(progress.percent, `Progress of ${job.id}`), h("span", { class: "hint", text: `${Math.round(progress.percent)}%${progress.message ? ` · ${progress.message}` : ""}` })) : h("span", { class: "hint", text: "—" })),
      h("td", { class: "optional" }, when(job.createdAt)),
      h("td", { class: "optional" }, when(job.updatedAt)),
    ];
  }

  function put(job, where) {
    const known = rows.get(job.id);
    if (known) {
      known.job = job;
      known.row.replaceChildren(...cells(job));
      known.row.dataset.status = job.status;
      return;
    }
    const row = h("tr", { "data-job": job.id, "data-status": job.status }, cells(job));
    rows.set(job.id, { row, job });
    if (where === "top") tbody.prepend(row);
    else tbody.append(row);
  }

  function trim() {
    while (rows.size > MAX_ROWS) {
      const last = tbody.lastElementChild;
      rows.delete(last.dataset.job);
      last.remove();
      older.hidden = false;
    }
    const last = tbody.lastElementChild;
    cursor = last ? last.dataset.job : null;
    empty.hidden = rows.size > 0;
  }

  async function page(beforeId) {
    const query = new URLSearchParams({ limit: String(PAGE), include: "progress" });
    if (status) query.set("status", status);
    if (name) query.set("name", name);
    if (beforeId) query.set("beforeId", beforeId);
    const { data } = await api("GET", `/api/v1/spaces/${encodeURIComponent(spaceId)}/jobs?${query}`);
    for (const job of data) put(job, "bottom");
    older.hidden = data.length < PAGE;
    trim();
  }

  async function reload() {
    rows.clear();
    tbody.replaceChildren();
    await page(null);
  }

  older.addEventListener("click", () => page(cursor).catch(failed));

  // Live: new jobs on top, changes in place. A job that leaves the filter
  // stays until the next reload, showing its new status.
  function apply(events) {
    for (const event of events) {
      if (!event.jobId) continue;
      const known = rows.get(event.jobId);
      if (known) {
        if (known.job.updatedAt && event.timestamp < known.job.updatedAt) continue;
        const job = { ...known.job, status: event.status || known.job.status, updatedAt: event.timestamp };
        if (event.type === "progress" && event.data) job.progress = event.data;
        put(job);
      } else if (event.type === "created") {
        const job = { id: event.jobId, name: event.jobName, status: event.status, createdAt: event.timestamp, updatedAt: event.timestamp };
        if (matches(job)) put(job, "top");
      }
    }
    trim();
  }

  let loaded = false;
  const pending = [];
  const stream = new SpaceStream(spaceId, {
    onState: (on) => {
      live.classList.toggle("on", on);
      live.textContent = on ? "Live" : "Reconnecting";
    },
    onCounts: (latest) => counts.replaceChildren(countsList(spaceId, latest, status)),
    onEvents: (events) => (loaded ? apply(events) : pending.push(...events)),
    onRevalidate: () => reload().catch(failed),
  });
  onTeardown(() => stream.close());
  await reload();
  loaded = true;
  apply(pending.splice(0));
}

// ---- One job -------------------------------------------------------------

function progressCard(progress) {
  const card = h("section", { class: "card", id: "progress", "aria-label": "Progress" }, h("h2", { text: "Progress" }));
  if (!progress) {
    card.append(h("p", { class: "hint", text: "No progress reported yet." }));
    return card;
  }
  const percent = Number(progress.percent) || 0;
  card.append(h("div", { class: "stage", "data-stage": "" },
    h("strong", { text: "Overall" }), bar(percent, "Overall progress"), h("span", { text: `${Math.round(percent)}%` }),
    progress.message ? h("span", { class: "msg", text: progress.message }) : null));
  for (const [stage, detail] of Object.entries(progress.subProgress || {})) {
    const value = Number(detail && detail.percent) || 0;
    card.append(h("div", { class: "stage", "data-stage": stage },
      h("span", { text: stage }), bar(value, `${stage} progress`), h("span", { text: `${Math.round(value)}%` }),
      detail && detail.message ? h("span", { class: "msg", text: detail.message }) : null));
  }
  return card;
}

function eventItem(event) {
  return h("li", { "data-type": event.type },
    h("strong", { text: event.type }), " → ", statusBadge(event.status), " ", when(event.timestamp),
    event.data !== undefined && event.data !== null ? json(event.data) : null);
}

async function jobView(view, jobId) {
  let job = (await api("GET", `/api/v1/jobs/${encodeURIComponent(jobId)}`)).data;
  const spaceId = job.spaceId;
  header(spaceId, "jobs");
  const title = h("div", { class: "row", style: "justify-content:space-between" });
  const live = h("span", { class: "live", id: "live", text: "Connecting" });
  const actions = h("div", { class: "row" });
  const progress = h("div");
  const fields = h("div");
  const events = h("ol", { class: "events", id: "events" });

  function render() {
    title.replaceChildren(h("h1", {}, `${job.name} `, statusBadge(job.status)), live);
    actions.replaceChildren();
    // A space key's session is read-only: it gets no actions.
    if (session.admin && !FINISHED.has(job.status)) {
      actions.append(h("button", { class: "danger", id: "kill", onclick: () => act("kill"), text: "Kill job" }));
    }
    if (session.admin && (job.status === "dead" || job.status === "killed")) {
      actions.append(h("button", { id: "retry", onclick: () => act("retry"), text: "Retry job" }));
    }
    progress.replaceChildren(progressCard(job.progress));
    const rowsOf = [
      ["Id", h("span", { class: "mono", text: job.id })],
      ["Space", h("a", { href: `#/spaces/${encodeURIComponent(spaceId)}/jobs`, class: "mono", text: spaceId })],
      ["Status", statusBadge(job.status)],
      ["Attempt", `${job.attemptNumber} of ${job.maxRetries + 1}`],
      ["Timeout", `${job.timeoutSeconds} s`],
      ["Priority", String(job.priority ?? 0)],
      ["Created", when(job.createdAt)],
      ["Scheduled for", when(job.scheduledFor)],
      ["Delivered", when(job.deliveredAt)],
      ["Started", when(job.startedAt)],
      ["Finished", when(job.completedAt)],
      ["Updated", when(job.updatedAt)],
    ];
    if (job.waitingReason) rowsOf.push(["Waiting", WAITING[job.waitingReason] || job.waitingReason]);
    if (job.concurrencyKey) {
      const limit = job.concurrencyLimit ? ` (own limit ${job.concurrencyLimit})` : "";
      rowsOf.push(["Concurrency key", h("span", { class: "mono", text: `${job.concurrencyKey}${limit}` })]);
    }
    if (job.scheduleId) {
      rowsOf.push(["Schedule", h("span", {}, h("span", { class: "mono", text: job.scheduleId }), " · fire ", when(job.fireTime))]);
    }
    if (job.killReason) rowsOf.push(["Kill reason", job.killReason]);
    if (job.callbackUrl) rowsOf.push(["Callback", job.callbackUrl]);
    const blocks = [["Payload", job.payload], ["Result", job.result], ["Error", job.error], ["Checkpoint", job.checkpoint]]
      .filter(([, value]) => value !== null && value !== undefined)
      .map(([label, value]) => h("section", { "aria-label": label }, h("h2", { text: label }), json(value)));
    fields.replaceChildren(h("section", { class: "card" },
      h("dl", { class: "fields" }, rowsOf.flatMap(([label, value]) => [h("dt", { text: label }), h("dd", {}, value)])),
      blocks));
  }

  async function act(action) {
    try {
      job = (await api("POST", `/api/v1/jobs/${encodeURIComponent(job.id)}/${action}`, {})).data;
      toast(action === "kill" ? "Job killed" : "Job queued again");
      render();
    } catch (error) { failed(error); }
  }

  let refreshing = null;
  function refresh() {
    if (refreshing) return;
    refreshing = setTimeout(async () => {
      refreshing = null;
      try {
        const latest = (await api("GET", `/api/v1/jobs/${encodeURIComponent(jobId)}`)).data;
        job = { ...latest, progress: latest.progress ?? job.progress };
        render();
      } catch (error) { failed(error); }
    }, 200);
  }

  for (const event of job.events || []) events.append(eventItem(event));

  // Tabs: Events and Logs.
  const eventsTab = h("button", { role: "tab", id: "tab-events", "aria-controls": "panel-events", "aria-selected": "true", text: "Events" });
  const logsTab = h("button", { role: "tab", id: "tab-logs", "aria-controls": "panel-logs", "aria-selected": "false", tabindex: "-1", text: "Logs" });
  const eventsPanel = h("div", { role: "tabpanel", id: "panel-events", "aria-labelledby": "tab-events" },
    events, h("p", { class: "hint", text: "New events appear here as they happen." }));
  const logs = logPanel(jobId);
  const logsPanel = h("div", { role: "tabpanel", id: "panel-logs", "aria-labelledby": "tab-logs", hidden: true }, logs.node);
  const select = (tab) => {
    const showLogs = tab === logsTab;
    eventsTab.setAttribute("aria-selected", String(!showLogs));
    logsTab.setAttribute("aria-selected", String(showLogs));
    eventsTab.tabIndex = showLogs ? -1 : 0;
    logsTab.tabIndex = showLogs ? 0 : -1;
    eventsPanel.hidden = showLogs;
    logsPanel.hidden = !showLogs;
    tab.focus();
  };
  eventsTab.addEventListener("click", () => select(eventsTab));
  logsTab.addEventListener("click", () => select(logsTab));
  const tablist = h("div", { role: "tablist", "aria-label": "Job feed" }, eventsTab, logsTab);
  tablist.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") select(eventsPanel.hidden ? eventsTab : logsTab);
  });

  render();
  view.append(title, actions, progress, fields, h("section", { class: "card" }, tablist, eventsPanel, logsPanel));

  const stream = new LiveSocket(`/api/v1/realtime/${encodeURIComponent(jobId)}`, (batch) => {
    for (const message of batch) {
      if (message.type === "log") {
        logs.live(message.data);
      } else if (message.type === "init") {
        if (message.progress) job.progress = message.progress;
        job.status = message.status;
      } else {
        events.append(eventItem(message));
        if (message.type === "progress" && message.data) job.progress = message.data;
        if (message.status) job.status = message.status;
      }
    }
    render();
    refresh();
  }, (on) => {
    live.classList.toggle("on", on);
    live.textContent = on ? "Live" : "Reconnecting";
  });
  onTeardown(() => stream.close());
  await logs.load();
}

// The Logs tab: the newest lines first loaded, live tail, full-text search,
// level filter, older batches by sequence cursor.
function logPanel(jobId) {
  const search = h("input", { id: "log-search", type: "search", autocomplete: "off", placeholder: "Search messages" });
  const level = h("select", { id: "log-level" }, h("option", { value: "", text: "Any level" }),
    LOG_LEVELS.map((name) => h("option", { value: name, text: name })));
  const tail = h("input", { id: "log-tail", type: "checkbox", checked: true });
  const list = h("div", { class: "logs", id: "log-lines", role: "log", "aria-live": "polite", tabindex: "0" });
  const older = h("button", { id: "log-older", hidden: true, text: "Load older lines" });
  const empty = h("p", { class: "hint", id: "log-empty", text: "No log lines yet. Workers append them with POST /api/v1/jobs/:id/logs." });
  let before = null;
  let newest = 0;

  const line = (entry) => h("div", { class: `lvl-${entry.level}`, "data-seq": String(entry.seq) },
    `${new Date(entry.timestamp).toLocaleTimeString()} ${entry.level.toUpperCase().padEnd(5)} ${entry.message}`);

  const wanted = (entry) => (!level.value || entry.level === level.value)
    && (!search.value || entry.message.toLowerCase().includes(search.value.toLowerCase()));

  async function fetchPage(cursor) {
    const query = new URLSearchParams({ limit: "100", before: String(cursor ?? Number.MAX_SAFE_INTEGER) });
    if (level.value) query.set("level", level.value);
    if (search.value) query.set("q", search.value);
    return (await api("GET", `/api/v1/jobs/${encodeURIComponent(jobId)}/logs?${query}`)).data;
  }

  async function load() {
    const data = await fetchPage(null);
    list.replaceChildren(...data.lines.map(line));
    newest = data.lines.length ? data.lines[data.lines.length - 1].seq : newest;
    before = data.nextBefore ?? null;
    older.hidden = data.lines.length < 100;
    empty.hidden = data.lines.length > 0;
    list.scrollTop = list.scrollHeight;
  }

  older.addEventListener("click", async () => {
    try {
      const data = await fetchPage(before);
      list.prepend(...data.lines.map(line));
      before = data.nextBefore ?? before;
      older.hidden = data.lines.length < 100;
    } catch (error) { failed(error); }
  });

  let timer = null;
  const reload = () => {
    clearTimeout(timer);
    timer = setTimeout(() => load().catch(failed), 200);
  };
  search.addEventListener("input", reload);
  level.addEventListener("change", reload);

  function live(entry) {
    if (!entry || !tail.checked || entry.seq <= newest) return;
    newest = entry.seq;
    if (!wanted(entry)) return;
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(line(entry));
    empty.hidden = true;
    if (atEnd) list.scrollTop = list.scrollHeight;
  }

  const node = h("div", {},
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "log-search", text: "Search" }), search),
      h("div", {}, h("label", { for: "log-level", text: "Level" }), level),
      h("label", { class: "inline", for: "log-tail" }, tail, "Tail live")),
    h("p", {}, older), list, empty);
  return { node, load, live };
}

// ---- Tokens --------------------------------------------------------------

function shownOnce(label, secret) {
  const copy = h("button", {
    type: "button",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        copy.textContent = "Copied";
      } catch {
        const range = document.createRange();
        range.selectNodeContents(code);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        copy.textContent = "Selected: press Ctrl+C";
      }
    },
    text: "Copy",
  });
  const code = h("code", { class: "mono", "data-secret": "" }, secret);
  return h("div", { class: "secret", role: "alert" },
    h("strong", { text: `${label} (shown once, copy it now):` }), code, copy);
}

async function tokensView(view, spaceId) {
  const path = `/api/v1/spaces/${encodeURIComponent(spaceId)}`;
  const [space, tokens] = await Promise.all([api("GET", path), api("GET", `${path}/tokens`)]);
  const revealed = h("div", { id: "new-key" });
  const name = h("input", { id: "token-name", required: true, autocomplete: "off", maxlength: "200" });
  const boxes = SCOPES.map((scope) => h("input", { type: "checkbox", value: scope, id: `scope-${scope}`, name: "scope" }));
  const preset = () => boxes.forEach((box) => { box.checked = WORKER_PRESET.includes(box.value); });
  const form = h("form", {
    class: "card",
    onsubmit: async (event) => {
      event.preventDefault();
      const scopes = boxes.filter((box) => box.checked).map((box) => box.value);
      try {
        const created = (await api("POST", `${path}/tokens`, { name: name.value, scopes })).data;
        await tokensView(view.replaceChildren() || view, spaceId);
        document.getElementById("new-key").replaceChildren(shownOnce(`Key of ${created.name}`, created.key));
      } catch (error) { failed(error); }
    },
  },
    h("h2", { text: "Create a token" }),
    h("label", { for: "token-name", text: "Name" }), name,
    h("fieldset", {}, h("legend", { text: "Scopes" }),
      h("p", {}, h("button", { type: "button", id: "worker-preset", onclick: preset, text: "Worker preset" })),
      boxes.map((box) => h("label", { class: "inline", for: box.id }, box, h("code", { text: box.value })))),
    h("button", { class: "primary", type: "submit", text: "Create token" }));

  const publicToken = space.data.publicToken;
  const publicCard = h("section", { class: "card", id: "public-token" }, h("h2", { text: "Public progress token" }),
    publicToken
      ? [h("p", {}, h("code", { class: "mono", text: publicToken })),
        h("p", { class: "hint", text: "Scope jobs:read:progress: safe to embed in browsers. It watches one job's progress and status: wss://HOST/api/v1/realtime/JOB_ID?token=THIS_TOKEN" })]
      : h("p", { class: "hint", text: "Revoked: rotate to issue a new one." }),
    h("button", {
      type: "button",
      onclick: async () => {
        try {
          await api("POST", `${path}/public-token`, {});
          toast("Public token rotated");
          await tokensView(view.replaceChildren() || view, spaceId);
        } catch (error) { failed(error); }
      },
      text: "Rotate public token",
    }));

  const list = tokens.data;
  const table = list.length
    ? h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Scopes"].map((label) => h("th", { text: label })), h("th", { class: "optional", text: "Created" }), h("th", { text: "" }))),
      h("tbody", { id: "tokens" }, list.map((token) => h("tr", { "data-token": token.id },
        h("td", { text: token.name }),
        h("td", {}, token.scopes.map((scope) => h("code", { text: `${scope} ` }))),
        h("td", { class: "optional" }, when(token.createdAt)),
        h("td", {}, h("button", {
          class: "danger",
          "aria-label": `Revoke ${token.name}`,
          onclick: async () => {
            if (!confirm(`Revoke ${token.name}? Clients using it stop working at once.`)) return;
            try {
              await api("DELETE", `${path}/tokens/${encodeURIComponent(token.id)}`);
              toast(`${token.name} revoked`);
              await tokensView(view.replaceChildren() || view, spaceId);
            } catch (error) { failed(error); }
          },
          text: "Revoke",
        })))))))
    : h("div", { class: "empty", text: "No tokens: create one below for a producer or a worker." });
  view.append(h("h1", { text: `Tokens · ${space.data.name}` }), revealed, table, h("h2", { text: "" }), form, publicCard);
}

// ---- Settings ------------------------------------------------------------

async function settingsView(view, spaceId) {
  const path = `/api/v1/spaces/${encodeURIComponent(spaceId)}`;
  const space = (await api("GET", path)).data;
  const save = async (body, message) => {
    try {
      await api("PATCH", path, body);
      toast(message);
      await settingsView(view.replaceChildren() || view, spaceId);
    } catch (error) { failed(error); }
  };

  // HTTP push wake-up.
  const push = space.push || {};
  const pushUrl = h("input", { id: "push-url", type: "url", value: push.url || "", placeholder: "https://worker.example/wake" });
  const pushNames = h("input", { id: "push-names", value: (push.names || []).join(", "), placeholder: "all job names" });
  const pushHeaders = h("textarea", { id: "push-headers", placeholder: "Authorization: Bearer …" });
  const pushForm = h("form", {
    class: "card", id: "push",
    onsubmit: (event) => {
      event.preventDefault();
      const url = pushUrl.value.trim();
      if (!url) return save({ push: null }, "HTTP push turned off");
      const headers = {};
      for (const lineText of pushHeaders.value.split("\n")) {
        const at = lineText.indexOf(":");
        if (at > 0) headers[lineText.slice(0, at).trim()] = lineText.slice(at + 1).trim();
      }
      const names = pushNames.value.split(",").map((n) => n.trim()).filter(Boolean);
      const body = { url, names };
      if (Object.keys(headers).length) body.headers = headers;
      return save({ push: body }, "HTTP push saved");
    },
  },
    h("h2", { text: "HTTP push wake-up" }),
    h("p", { class: "hint", text: "When a job becomes ready, emit POSTs {jobId, …} to this URL so a sleeping worker can claim exactly that job. Best effort: it never affects processing. An empty URL turns push off." }),
    h("label", { for: "push-url", text: "URL" }), pushUrl,
    h("label", { for: "push-names", text: "Job names (comma-separated; empty: all)" }), pushNames,
    h("label", { for: "push-headers", text: "Headers, one per line (Name: value). Stored values are never shown; leave empty to keep none." }), pushHeaders,
    h("p", {}, h("button", { class: "primary", type: "submit", text: "Save push settings" })));

  // Anonymous progress streams.
  const anonymous = h("input", { id: "anonymous", type: "checkbox", checked: space.anonymousProgressStreams ? true : undefined });
  const anonymousForm = h("form", {
    class: "card",
    onsubmit: (event) => {
      event.preventDefault();
      save({ anonymousProgressStreams: anonymous.checked }, "Saved");
    },
  }, h("h2", { text: "Anonymous progress streams" }),
    h("label", { class: "inline", for: "anonymous" }, anonymous, "Anyone may watch a job's progress stream without a key (they see what jobs:read:progress sees)"),
    h("p", {}, h("button", { type: "submit", text: "Save" })));

  // Webhook signing secret.
  const secretBox = h("div");
  const secretCard = h("section", { class: "card", id: "webhook-secret" },
    h("h2", { text: "Webhook signing secret" }),
    h("p", { class: "hint", text: "Callbacks are signed (Standard Webhooks) once a secret is set. Rotating shows the new secret once; removing stops signing." }),
    secretBox,
    h("div", { class: "row" },
      h("button", {
        type: "button", id: "rotate-secret",
        onclick: async () => {
          try {
            const rotated = (await api("POST", `${path}/webhook-secret`, {})).data;
            secretBox.replaceChildren(shownOnce("Signing secret", rotated.secret));
          } catch (error) { failed(error); }
        },
        text: "Rotate secret",
      }),
      h("button", {
        type: "button", class: "danger",
        onclick: async () => {
          if (!confirm("Stop signing this space's callbacks?")) return;
          try {
            await api("DELETE", `${path}/webhook-secret`);
            toast("Signing secret removed");
            secretBox.replaceChildren();
          } catch (error) { failed(error); }
        },
        text: "Remove secret",
      })));

  // Slack notifications.
  const slack = space.slack || {};
  const slackUrl = h("input", { id: "slack-url", type: "url", placeholder: slack.url || "https://hooks.slack.com/services/…" });
  const slackBoxes = SLACK_EVENTS.map((name) => h("input", {
    type: "checkbox", value: name, id: `slack-${name}`,
    checked: (slack.events || ["completed", "dead", "killed"]).includes(name) ? true : undefined,
  }));
  const slackForm = h("form", {
    class: "card", id: "slack",
    onsubmit: (event) => {
      event.preventDefault();
      const events = slackBoxes.filter((box) => box.checked).map((box) => box.value);
      const url = slackUrl.value.trim();
      // The stored URL is never shown in full, so a change names it again.
      if (!url) return toast("Enter the Incoming Webhook URL to save (the stored one is not shown).");
      return save({ slack: { url, events } }, "Slack settings saved");
    },
  },
    h("h2", { text: "Slack notifications" }),
    h("p", { class: "hint", text: slack.url ? `Sending to ${slack.url}. To change the events or the URL, enter the URL again.` : "Off. Paste a Slack Incoming Webhook URL to turn them on." }),
    h("label", { for: "slack-url", text: "Incoming Webhook URL" }), slackUrl,
    h("fieldset", {}, h("legend", { text: "Events" }), slackBoxes.map((box) => h("label", { class: "inline", for: box.id }, box, box.value))),
    h("div", { class: "row" },
      h("button", { class: "primary", type: "submit", text: "Save Slack settings" }),
      slack.url ? h("button", { type: "button", class: "danger", onclick: () => save({ slack: null }, "Slack notifications turned off"), text: "Turn off" }) : null));

  // Retention of finished jobs, in days (0 keeps them; empty: the server's default).
  const kept = space.retention || {};
  const days = (seconds) => (seconds === undefined || seconds === null ? "" : String(seconds / 86400));
  const ages = ["completed", "dead", "killed"].map((status) => h("input", {
    id: `retain-${status}`, type: "number", min: "0", step: "any", value: days(kept[status]), "data-status": status,
  }));
  const retentionForm = h("form", {
    class: "card", id: "retention",
    onsubmit: (event) => {
      event.preventDefault();
      const retention = {};
      for (const input of ages) {
        retention[input.dataset.status] = input.value === "" ? null : Math.round(Number(input.value) * 86400);
      }
      save({ retention }, "Retention saved");
    },
  },
    h("h2", { text: "Retention of finished jobs" }),
    h("p", { class: "hint", text: "Finished jobs are deleted this many days after they end, with their events and logs. 0 keeps them; empty uses the server's default. Shown: the retention in force." }),
    h("div", { class: "row" }, ages.map((input) => h("div", {}, h("label", { for: input.id, text: `${input.dataset.status} (days)` }), input))),
    h("p", {}, h("button", { type: "submit", text: "Save retention" })));

  view.append(h("h1", { text: `Settings · ${space.name}` }), pushForm, anonymousForm, secretCard, slackForm, retentionForm);
}

window.addEventListener("hashchange", route);
route();
