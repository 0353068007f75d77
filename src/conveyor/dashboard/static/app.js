// The dashboard's pages: hash routes, each polling its JSON endpoint every 2 s.
// Data is always put in the page as text (never as HTML): task arguments, results
// and reasons come from users' code.
"use strict";

const POLL_MS = 2000;
const STATES = ["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED"];

// -- helpers -----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Conveyor-Dashboard": "1" },
    body: JSON.stringify(body || {}),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
  return answer;
}

function flash(text, isError) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.className = isError ? "flash error" : "flash";
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

// Run a change; say what happened; refresh the page's data at once.
async function act(what, promise) {
  try {
    const answer = await promise;
    flash(typeof what === "function" ? what(answer) : what);
  } catch (error) {
    flash(`Failed: ${error.message}`, true);
  }
  router.refreshNow();
}

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function fmtTime(t) {
  if (t === null || t === undefined) return "—";
  return new Date(t * 1000).toLocaleString();
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.abs(seconds);
  let text;
  if (s < 0.01) text = `${(s * 1000).toFixed(2)} ms`;
  else if (s < 1) text = `${(s * 1000).toFixed(0)} ms`;
  else if (s < 60) text = `${s.toFixed(s < 10 ? 1 : 0)} s`;
  else if (s < 3600) text = `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  else if (s < 86400) text = `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  else text = `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  return text;
}

function fmtClock(t) {
  return t === null || t === undefined ? "—" : new Date(t * 1000).toLocaleTimeString();
}

// A task id as a link, short (its full id in the tooltip).
function taskLink(id) {
  return el("a", { href: `#/task/${encodeURIComponent(id)}`, title: id, class: "mono" }, id.length > 13 ? `${id.slice(0, 8)}…` : id);
}

function fmtValue(v) {
  if (v === undefined || v === null) return "—";
  return typeof v === "string" ? v : JSON.stringify(v);
}

function badge(state) {
  return el("span", { class: `badge ${state || ""}`, "data-state": state }, state || "?");
}

function table(headers, rows, emptyText) {
  const head = el("tr", {}, headers.map((h) => el("th", { class: h.startsWith("#") ? "num" : "" }, h.replace(/^#/, ""))));
  const body = rows.length
    ? rows
    : [el("tr", { class: "empty" }, el("td", { colspan: headers.length }, emptyText || "nothing here"))];
  return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
}

function num(v) {
  return el("td", { class: "num" }, v === undefined || v === null ? "—" : fmtNumber(v));
}

function card(label, value, id) {
  return el("div", { class: "card", id }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function fields(pairs) {
  return el("dl", { class: "fields" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function hashQuery() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

// -- pages: each is setup(root, match) -> refresh(), which fills the data region ---------

// Overview: the browser keeps the last readings of the counters to draw rates.
const history = { samples: [] };

function overviewPage(root) {
  root.append(
    el("h1", {}, "Overview"),
    el("div", { class: "cards", id: "totals" }),
    el("div", { class: "charts" },
      el("div", { class: "panel chart" }, el("h3", {}, "Throughput (tasks finished per second)"), el("div", { id: "chart-throughput" })),
      el("div", { class: "panel chart" }, el("h3", {}, "Failures per second"), el("div", { id: "chart-failures" }))),
    el("h2", {}, "By task"),
    el("div", { id: "by-task" }),
  );
  return async () => {
    const data = await api("api/overview");
    const t = data.totals;
    const finished = Object.values(t).reduce((a, b) => a + b, 0);
    const failed = t.FAILURE || 0;
    history.samples.push({ t: data.now, finished, failed });
    if (history.samples.length > 200) history.samples.shift();
    const rates = (key) => {
      const out = [];
      for (let i = 1; i < history.samples.length; i++) {
        const a = history.samples[i - 1], b = history.samples[i];
        const dt = b.t - a.t;
        // a reset of the counters (or a restart of a reader) is not a negative rate
        if (dt > 0) out.push([b.t, Math.max(0, (b[key] - a[key]) / dt)]);
      }
      return out;
    };
    document.getElementById("totals").replaceChildren(
      card("Workers", data.workers, "total-workers"),
      card("Ready", fmtNumber(data.queues.ready), "total-ready"),
      card("In flight", fmtNumber(data.queues.in_flight), "total-in-flight"),
      card("Dead", fmtNumber(data.queues.dead), "total-dead"),
      ...["SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED", "IGNORED"]
        .filter((s) => s in t || s === "SUCCESS" || s === "FAILURE")
        .map((s) => card(s.toLowerCase(), fmtNumber(t[s] || 0), `total-${s}`)),
    );
    lineChart(document.getElementById("chart-throughput"), [{ name: "finished", color: "#2f6fde", points: rates("finished") }], { span: 120, unit: "/s" });
    lineChart(document.getElementById("chart-failures"), [{ name: "failed", color: "#d64545", points: rates("failed") }], { span: 120, unit: "/s" });
    const states = [...new Set(Object.values(data.tasks).flatMap((s) => Object.keys(s)))].sort();
    const rows = Object.entries(data.tasks).sort().map(([name, byState]) =>
      el("tr", { "data-task": name }, el("td", { class: "mono" }, name), states.map((s) => num(byState[s] || 0))));
    document.getElementById("by-task").replaceChildren(
      table(["task", ...states.map((s) => "#" + s)], rows, "no task has finished yet (counters are written by workers every 2 s)"));
  };
}

function queuesPage(root) {
  root.append(
    el("h1", {}, "Queues"),
    el("p", { class: "note" }, "Latency: how long the oldest ready message has waited. Held: fetched by a worker, not yet acknowledged."),
    el("div", { id: "queues" }),
  );
  return async () => {
    const data = await api("api/queues");
    const rows = data.queues.map((q) => el("tr", { "data-queue": q.queue },
      el("td", { class: "mono" }, q.queue),
      num(q.ready), num(q.delayed), num(q.in_flight), num(q.dead),
      el("td", { class: "num" }, fmtAge(q.latency)),
      el("td", {}, el("button", {
        class: "danger", "data-action": "purge",
        onclick: async () => {
          if (await confirmAction(`Purge queue "${q.queue}"? Its ${q.ready + q.delayed} ready and delayed messages are deleted for good.`)) {
            act((a) => `Purged ${a.purged} message(s) of ${q.queue}`, post("api/queues/purge", { queue: q.queue }));
          }
        },
      }, "Purge"))));
    document.getElementById("queues").replaceChildren(
      table(["queue", "#ready", "#delayed", "#held", "#dead", "#latency", ""], rows, "no queue holds anything"));
  };
}

function workerButtons(name) {
  return [
    el("button", { "data-action": "grow", title: "Add a process/thread to the pool", onclick: () => act(`Asked ${name} to grow its pool`, post("api/workers/pool-grow", { name, n: 1 })) }, "+1"),
    el("button", { "data-action": "shrink", title: "Remove one from the pool", onclick: () => act(`Asked ${name} to shrink its pool`, post("api/workers/pool-shrink", { name, n: 1 })) }, "−1"),
    el("button", {
      class: "danger", "data-action": "shutdown",
      onclick: async () => {
        if (await confirmAction(`Shut down worker ${name}? It finishes its running tasks and exits.`)) {
          act(`Asked ${name} to shut down`, post("api/workers/shutdown", { name }));
        }
      },
    }, "Shut down"),
  ];
}

function workersPage(root) {
  root.append(el("h1", {}, "Workers"), el("div", { id: "workers" }));
  return async () => {
    const data = await api("api/workers");
    const rows = data.workers.map((w) => {
      const age = w.heartbeat ? data.now - w.heartbeat : null;
      const late = age !== null && w.freq && age > 2 * w.freq;
      return el("tr", { "data-worker": w.name },
        el("td", {}, el("a", { href: `#/worker/${encodeURIComponent(w.name)}` }, w.name)),
        el("td", {}, `${w.pool || "?"}`), num(w.concurrency), num(w.active), num(w.processed),
        el("td", { class: "mono" }, (w.queues || []).join(", ")),
        el("td", { class: late ? "num late" : "num" }, fmtAge(age)),
        el("td", { class: "num" }, w.started ? fmtAge(data.now - w.started) : "—"),
        el("td", { class: "nowrap" }, workerButtons(w.name)));
    });
    document.getElementById("workers").replaceChildren(
      table(["worker", "pool", "#concurrency", "#active", "#processed", "queues", "#last beat", "#up", ""], rows, "no live worker"));
  };
}

function workerPage(root, match) {
  const name = decodeURIComponent(match[1]);
  root.append(el("h1", {}, `Worker ${name}`), el("div", { id: "worker" }), el("h2", {}, "Active tasks"), el("div", { id: "active" }));
  return async () => {
    const data = await api(`api/worker?name=${encodeURIComponent(name)}`);
    const w = data.worker;
    document.getElementById("worker").replaceChildren(w
      ? el("div", { class: "panel" }, fields([
        ["host", w.host], ["pid", w.pid], ["version", w.version], ["pool", w.pool], ["concurrency", w.concurrency],
        ["queues", (w.queues || []).join(", ")], ["active", w.active], ["processed", w.processed],
        ["started", fmtTime(w.started)], ["last heartbeat", `${fmtAge(data.now - w.heartbeat)} ago (every ${w.freq} s)`],
        ["control", el("span", {}, workerButtons(name))],
      ]))
      : el("p", { class: "note", id: "worker-gone" }, "This worker is not alive (no heartbeat)."));
    const active = data.active || [];
    const rows = active.map((t) => el("tr", { "data-task": t.id },
      el("td", { class: "nowrap" }, taskLink(t.id)),
      el("td", { class: "mono" }, t.name || t.type || "?"),
      el("td", { class: "mono" }, fmtValue(t.args)),
      el("td", {}, t.time_start ? fmtTime(t.time_start) : "—")));
    document.getElementById("active").replaceChildren(data.error && !data.active
      ? el("p", { class: "note" }, `No reply: ${data.error}`)
      : table(["id", "task", "args", "started"], rows, "no task running"));
  };
}

function tasksPage(root) {
  const q = hashQuery();
  const go = () => {
    const params = new URLSearchParams();
    for (const key of ["id", "name", "state"]) {
      const value = document.getElementById(`filter-${key}`).value.trim();
      if (value) params.set(key, value);
    }
    const query = params.toString();
    location.hash = `#/tasks${query ? "?" + query : ""}`;
  };
  const stateSelect = el("select", { id: "filter-state", onchange: go },
    el("option", { value: "" }, "any state"), STATES.map((s) => el("option", { value: s, selected: q.get("state") === s }, s)));
  root.append(
    el("h1", {}, "Tasks"),
    el("p", { class: "note" }, "Listed from the newest task events: start workers with -E (task events), as Flower needs. Any task id is also looked up in the result backend and the dead letters."),
    el("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); go(); } },
      el("input", { id: "filter-id", placeholder: "task id", value: q.get("id") || "", size: 36 }),
      el("input", { id: "filter-name", placeholder: "task name", value: q.get("name") || "" }),
      stateSelect,
      el("button", { type: "submit", class: "primary" }, "Filter"),
      el("button", {
        type: "button", id: "lookup",
        onclick: () => {
          const id = document.getElementById("filter-id").value.trim();
          if (id) location.hash = `#/task/${encodeURIComponent(id)}`;
        },
      }, "Look up id")),
    el("div", { id: "tasks-summary", class: "note" }),
    el("div", { id: "tasks" }),
  );
  return async () => {
    const data = await api(`api/tasks?${q.toString()}`);
    document.getElementById("tasks-summary").textContent = data.events
      ? `${data.matched} task(s) match among the newest ${data.events} events` +
        (data.matched > data.tasks.length ? ` (the newest ${data.tasks.length} shown).` : ".")
      : "No task events: no worker sends them (start workers with -E).";
    const rows = data.tasks.map((t) => el("tr", { "data-task": t.id, "data-state": t.state },
      el("td", { class: "nowrap" }, taskLink(t.id)),
      el("td", { class: "mono" }, t.name || "?"),
      el("td", {}, badge(t.state)),
      el("td", { class: "mono" }, fmtValue(t.args)),
      el("td", {}, t.worker || "—"),
      el("td", { class: "nowrap", title: fmtTime(t.first) }, fmtClock(t.first)),
      el("td", { class: "num" }, t.runtime !== undefined ? fmtAge(t.runtime) : "—")));
    document.getElementById("tasks").replaceChildren(
      table(["id", "task", "state", "args", "worker", "seen", "#runtime"], rows, "no task matches"));
  };
}

function taskPage(root, match) {
  const id = decodeURIComponent(match[1]);
  root.append(
    el("h1", {}, "Task"),
    el("div", { class: "toolbar" },
      el("button", { class: "danger", id: "revoke", onclick: () => act("Revoked", post("api/tasks/revoke", { id })) }, "Revoke"),
      el("button", {
        class: "danger", id: "terminate",
        onclick: async () => {
          if (await confirmAction(`Revoke ${id} and stop it if it is running?`)) {
            act("Revoked and terminated", post("api/tasks/revoke", { id, terminate: true }));
          }
        },
      }, "Revoke and terminate"),
      el("button", { id: "retry", onclick: () => act((a) => `Sent again as ${a.id}`, post("api/tasks/retry", { id })) }, "Retry (send again)")),
    el("div", { id: "task" }),
  );
  return async () => {
    let t;
    try {
      t = await api(`api/task?id=${encodeURIComponent(id)}`);
    } catch (error) {
      document.getElementById("task").replaceChildren(el("p", { class: "note", id: "task-missing" }, error.message));
      return;
    }
    document.getElementById("retry").disabled = !t.can_retry;
    const parts = [
      el("div", { class: "panel" }, fields([
        ["id", el("span", { class: "mono", id: "task-id" }, t.id)],
        ["name", el("span", { class: "mono" }, t.name || "?")],
        ["state", el("span", { id: "task-state" }, badge(t.state))],
        ["args", el("span", { class: "mono" }, fmtValue(t.args))],
        ["kwargs", el("span", { class: "mono" }, fmtValue(t.kwargs))],
        ["result", el("pre", { id: "task-result" }, fmtValue(t.result))],
        ["exception", t.exception || "—"],
        ["retries", t.retries || 0],
        ["worker", t.worker || "—"],
        ["runtime", t.runtime !== undefined ? fmtAge(t.runtime) : "—"],
        ["done", t.date_done || "—"],
      ])),
    ];
    if (t.traceback) parts.push(el("h2", {}, "Traceback"), el("pre", { id: "task-traceback" }, t.traceback));
    parts.push(el("h2", {}, "Events"), table(["event", "time", "host", "#runtime", "exception"],
      t.events.map((e) => el("tr", { "data-event": e.type },
        el("td", {}, e.type), el("td", {}, fmtTime(e.timestamp)), el("td", {}, e.hostname || "—"),
        el("td", { class: "num" }, e.runtime !== undefined ? fmtAge(e.runtime) : "—"), el("td", {}, e.exception || ""))),
      "no event of this task among the newest (workers without -E send none)"));
    if (t.dead_letter) {
      const d = t.dead_letter;
      parts.push(el("h2", {}, "Dead letter"), el("div", { class: "panel", id: "task-dead" }, fields([
        ["reason", d.reason], ["deliveries", d.deliveries], ["died", fmtTime(d.died_at)],
        ["history", el("span", {}, d.history.map((h) => el("div", {}, `${fmtTime(h.at)}: ${h.consumer}`)))],
        ["", el("a", { href: `#/dead/${encodeURIComponent(d.id)}` }, "open the dead letter")],
      ])));
    }
    document.getElementById("task").replaceChildren(...parts);
  };
}

function deadButtons(id) {
  return [
    el("button", { "data-action": "requeue", onclick: () => act("Requeued", post("api/dead/requeue", { ids: [id] })) }, "Requeue"),
    el("button", {
      class: "danger", "data-action": "drop",
      onclick: async () => {
        if (await confirmAction(`Drop dead letter ${id} for good?`)) act("Dropped", post("api/dead/drop", { ids: [id] }));
      },
    }, "Drop"),
  ];
}

function deadPage(root) {
  root.append(
    el("h1", {}, "Dead letters"),
    el("p", { class: "note" }, "Messages taken out of circulation (undecodable, unknown task, delivered too often, or dead_letter_on_failure), oldest first."),
    el("div", { class: "toolbar" },
      el("button", {
        id: "requeue-all",
        onclick: async () => {
          if (await confirmAction("Requeue every dead letter? Each goes back to its queue as a fresh message.")) {
            act((a) => `Requeued ${a.count} dead letter(s)`, post("api/dead/requeue-all", {}));
          }
        },
      }, "Requeue all"),
      el("button", {
        class: "danger", id: "drop-all",
        onclick: async () => {
          if (await confirmAction("Drop every dead letter for good?")) act((a) => `Dropped ${a.count} dead letter(s)`, post("api/dead/drop-all", {}));
        },
      }, "Drop all")),
    el("div", { id: "dead-summary", class: "note" }),
    el("div", { id: "dead" }),
  );
  return async () => {
    const data = await api("api/dead");
    document.getElementById("dead-summary").textContent = `${data.total} dead letter(s) in all queues.`;
    const rows = data.dead.map((d) => el("tr", { "data-dead": d.id },
      el("td", { class: "nowrap" }, el("a", { href: `#/dead/${encodeURIComponent(d.id)}`, title: d.id, class: "mono" }, d.id.length > 13 ? `${d.id.slice(0, 8)}…` : d.id)),
      el("td", { class: "mono" }, d.task || "?"), el("td", { class: "mono" }, d.queue),
      el("td", {}, d.reason), num(d.deliveries),
      el("td", { class: "nowrap", title: fmtTime(d.died_at) }, fmtClock(d.died_at)),
      el("td", { class: "nowrap" }, deadButtons(d.id))));
    document.getElementById("dead").replaceChildren(
      table(["id", "task", "queue", "reason", "#deliveries", "died", ""], rows, "no dead letter"));
  };
}

function deadLetterPage(root, match) {
  const id = decodeURIComponent(match[1]);
  root.append(el("h1", {}, "Dead letter"), el("div", { class: "toolbar" }, deadButtons(id),
    el("a", { href: `#/task/${encodeURIComponent(id)}` }, "the task")), el("div", { id: "dead-letter" }));
  return async () => {
    let d;
    try {
      d = await api(`api/dead-letter?id=${encodeURIComponent(id)}`);
    } catch (error) {
      document.getElementById("dead-letter").replaceChildren(el("p", { class: "note" }, error.message));
      return;
    }
    let body = d.body;
    try { body = JSON.stringify(JSON.parse(d.body), null, 2); } catch (_) { /* not JSON: as it is */ }
    document.getElementById("dead-letter").replaceChildren(
      el("div", { class: "panel" }, fields([
        ["id", el("span", { class: "mono" }, d.id)], ["task", d.task || "?"], ["queue", d.queue],
        ["reason", d.reason], ["deliveries", d.deliveries], ["priority", d.priority], ["died", fmtTime(d.died_at)],
      ])),
      el("h2", {}, "Deliveries"),
      table(["#", "time", "consumer"], d.history.map((h, i) => el("tr", {}, num(i + 1), el("td", {}, fmtTime(h.at)), el("td", {}, h.consumer))), "no delivery recorded"),
      el("h2", {}, "Body"), el("pre", { id: "dead-body" }, body));
  };
}

function schedulesPage(root) {
  root.append(el("h1", {}, "Schedules"), el("p", { class: "note", id: "schedules-note" }), el("div", { id: "schedules" }));
  return async () => {
    const data = await api("api/schedules");
    document.getElementById("schedules-note").textContent = data.error
      ? `beat_schedule is not valid: ${data.error}`
      : `Periodic tasks of beat_schedule (time zone ${data.timezone}); last fire is the latest slot a beat sent.`;
    const rows = data.entries.map((e) => el("tr", { "data-entry": e.name },
      el("td", {}, e.name), el("td", { class: "mono" }, e.task), el("td", {}, e.schedule),
      el("td", {}, e.last ? `${fmtTime(e.last)} (${fmtAge(data.now - e.last)} ago)` : "never"),
      el("td", {}, `${fmtTime(e.next)} (in ${fmtAge(e.next - data.now)})`)));
    document.getElementById("schedules").replaceChildren(
      table(["entry", "task", "schedule", "last fire", "next fire"], rows, "no periodic task"));
  };
}

// -- router --------------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, "overview", overviewPage],
  [/^#\/queues$/, "queues", queuesPage],
  [/^#\/workers$/, "workers", workersPage],
  [/^#\/worker\/(.+)$/, "workers", workerPage],
  [/^#\/tasks(\?.*)?$/, "tasks", tasksPage],
  [/^#\/task\/(.+)$/, "tasks", taskPage],
  [/^#\/dead$/, "dead", deadPage],
  [/^#\/dead\/(.+)$/, "dead", deadLetterPage],
  [/^#\/schedules$/, "schedules", schedulesPage],
];

const router = {
  generation: 0,
  timer: null,
  refresh: null,
  show() {
    const hash = location.hash || "#/";
    const [pattern, name, setup] = ROUTES.find(([p]) => p.test(hash)) || ROUTES[0];
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
    const root = document.getElementById("page");
    root.replaceChildren();
    root.dataset.page = name;
    this.generation += 1;
    this.refresh = setup(root, hash.match(pattern) || []);
    this.refreshNow();
  },
  async refreshNow() {
    // the latest call owns the next poll: an action's refresh never doubles the polling
    clearTimeout(this.timer);
    const tick = (this.tick = (this.tick || 0) + 1);
    const generation = this.generation;
    const status = document.getElementById("status");
    try {
      await this.refresh();
      if (generation !== this.generation) return;
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
      status.className = "status";
      document.body.dataset.loaded = String(generation);
    } catch (error) {
      if (generation !== this.generation) return;
      status.textContent = `cannot reach the dashboard: ${error.message}`;
      status.className = "status down";
    }
    if (tick === this.tick) this.timer = setTimeout(() => this.refreshNow(), POLL_MS);
  },
};

window.addEventListener("hashchange", () => router.show());
router.show();
