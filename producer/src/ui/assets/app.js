// The isotest dashboard: suites running and recent, a suite's live view (server-sent
// events, resumed with Last-Event-ID after a dropped connection), a test's attempts,
// and, where the server has a history store, a test's history, the flaky tests and
// the quarantine.
// Plain JavaScript, no build step; every text from the server goes in as text, never
// as HTML.
"use strict";

const main = document.getElementById("main");

// What the live view did, for tests and measurements: connections opened, snapshots
// and results received, and when each result was first painted (ms since the epoch).
window.isotestLive = null;

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (response.status === 401) {
    window.location.assign("/ui/login");
    throw new Error("not signed in");
  }
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// An optional view of the history store: its JSON, or null when the server has none.
async function optionalJson(path) {
  try {
    const response = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (!response.ok) return null;
    return await response.json();
  } catch (_) {
    return null;
  }
}

function ms(duration) {
  if (duration === undefined || duration === null) return "";
  if (duration < 1000) return `${duration} ms`;
  if (duration < 60000) return `${(duration / 1000).toFixed(1)} s`;
  return `${Math.floor(duration / 60000)} min ${Math.round((duration % 60000) / 1000)} s`;
}

function ago(epochMs) {
  const seconds = Math.max(0, Math.round((Date.now() - epochMs) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(epochMs).toLocaleString();
}

function badge(status) {
  return h("span", { class: `badge s-${status}`, text: status.replace("_", " ") });
}

function progress(done, total) {
  const percent = total > 0 ? Math.round((100 * done) / total) : 100;
  const bar = h("div", { class: "bar" });
  // Through the CSSOM: the page's CSP refuses style attributes.
  bar.style.width = `${percent}%`;
  return h("div", { class: "progress", title: `${done} of ${total} tests done` }, bar);
}

function testLink(suiteId, test) {
  return h("a", { href: `#/suites/${suiteId}/tests/${encodeURIComponent(test)}`, text: test });
}

function failedCount(summary) {
  return summary.failed + summary.errored + summary.timed_out + summary.oom + summary.lost;
}

// ---------- routing ----------

let leave = () => {};

function route() {
  leave();
  leave = () => {};
  const hash = window.location.hash || "#/";
  let match;
  if ((match = hash.match(/^#\/suites\/([0-9a-f-]+)\/tests\/(.+)$/))) {
    testPage(match[1], decodeURIComponent(match[2]));
  } else if ((match = hash.match(/^#\/suites\/([0-9a-f-]+)$/))) {
    livePage(match[1]);
  } else if (hash === "#/flaky") {
    flakyPage();
  } else {
    suitesPage();
  }
}

async function start() {
  try {
    const me = await getJson("/ui/api/me");
    const who = document.getElementById("who");
    if (me.token) {
      who.textContent = `token ${me.token}`;
      document.getElementById("logout").hidden = false;
    } else {
      who.textContent = "open server (no token)";
    }
  } catch (_) {
    return; // Sent to the login page.
  }
  if (await optionalJson("/v1/flaky")) {
    document.getElementById("nav-flaky").hidden = false;
  }
  window.addEventListener("hashchange", route);
  route();
}

// ---------- suites ----------

async function suitesPage() {
  let timer = null;
  let stopped = false;
  leave = () => { stopped = true; clearTimeout(timer); };
  const refresh = async () => {
    try {
      const list = await getJson("/ui/api/suites");
      if (stopped) return;
      const running = list.suites.filter((s) => s.state === "running");
      const ended = list.suites.filter((s) => s.state !== "running");
      show(
        h("h1", { text: "Suites" }),
        h("h2", { text: `Running (${running.length})` }),
        running.length ? suiteTable(running) : h("p", { class: "muted", text: "No suite is running." }),
        h("h2", { text: "Recent" }),
        ended.length ? suiteTable(ended) : h("p", { class: "muted", text: "No suite has ended yet." }),
      );
    } catch (error) {
      if (!stopped) show(h("p", { class: "error", text: `Could not load the suites: ${error.message}` }));
    }
    if (!stopped) timer = setTimeout(refresh, 3000);
  };
  await refresh();
}

function suiteTable(suites) {
  return h("table", { class: "suites" },
    h("thead", {}, h("tr", {},
      ["Suite", "State", "Progress", "Passed", "Failed", "Submitted", "Duration"].map((t) => h("th", { text: t })))),
    h("tbody", {}, suites.map((s) => h("tr", { "data-suite": s.id },
      h("td", {}, h("a", { href: `#/suites/${s.id}`, text: s.name }), h("div", { class: "id", text: s.id })),
      h("td", {}, badge(s.state)),
      h("td", {}, progress(s.done, s.total), h("span", { class: "count", text: `${s.done} / ${s.total}` })),
      h("td", { class: "num", text: s.summary ? s.summary.passed : "" }),
      h("td", { class: "num", text: s.summary ? failedCount(s.summary) : "" }),
      h("td", { text: ago(s.created_at_ms) }),
      h("td", { text: s.summary ? ms(s.summary.wall_ms) : ms(Date.now() - s.created_at_ms) }),
    ))));
}

// ---------- a suite's live view ----------

async function livePage(suiteId) {
  let stopped = false;
  leave = () => { stopped = true; };
  try {
    await getJson(`/ui/api/suites/${suiteId}`);
  } catch (error) {
    if (!stopped) {
      show(h("p", { class: "error", id: "not-found",
        text: error.status === 404 ? "No such suite (or not one of this token's)." : `Could not load the suite: ${error.message}` }),
        h("p", {}, h("a", { href: "#/", text: "All suites" })));
    }
    return;
  }
  if (stopped) return;
  const live = {
    opens: 0, snapshots: 0, results: 0, errors: 0, ended: null,
    painted: {}, // field -> ms since the epoch when first painted
  };
  window.isotestLive = live;
  const results = new Map(); // "test#attempt" -> result
  const finals = new Map(); // test -> its final result
  const latest = []; // the last results, newest first
  const failureCards = new Map(); // test -> its failures' cards
  const tally = {}; // status -> tests whose final attempt has it
  let retried = 0; // tests that passed on a retry
  let suite = null;
  let fresh = []; // fields received since the last paint
  let scheduled = false;

  const status = h("span", { class: "conn", id: "connection", text: "connecting…" });
  const title = h("h1", { id: "suite-name", text: "Suite" });
  const stateBadge = h("span", { id: "suite-state" }, badge("running"));
  const bar = h("div", { class: "progress big" }, h("div", { class: "bar" }));
  const counter = h("span", { class: "count", id: "progress-text", text: "" });
  const counts = h("div", { class: "counts", id: "counts" });
  const failures = h("div", { id: "failures" });
  const latestBody = h("tbody", { id: "latest" });
  show(
    h("div", { class: "title" }, title, stateBadge, status),
    h("div", { class: "id", id: "suite-id", text: suiteId }),
    h("div", { class: "progress-row" }, bar, counter),
    counts,
    h("h2", { text: "Failures" }),
    failures,
    h("h2", { text: "Latest results" }),
    h("table", { class: "results" },
      h("thead", {}, h("tr", {}, ["Test", "Attempt", "Status", "Duration", "Worker"].map((t) => h("th", { text: t })))),
      latestBody),
  );

  const paint = () => {
    scheduled = false;
    const total = suite ? suite.total : 0;
    const done = finals.size;
    bar.firstChild.style.width = `${total > 0 ? Math.round((100 * done) / total) : 0}%`;
    counter.textContent = `${done} / ${total} done`;
    counts.replaceChildren(
      ...Object.entries(tally).sort().map(([s, n]) => h("span", { class: `tally s-${s}`, "data-status": s, text: `${n} ${s}` })),
      retried ? h("span", { class: "tally s-flaky", text: `${retried} passed on a retry` }) : null,
    );
    latestBody.replaceChildren(...latest.slice(0, 20).map((r) => h("tr", {},
      h("td", {}, testLink(suiteId, r.test)),
      h("td", { class: "num", text: r.attempt }),
      h("td", {}, badge(r.status), r.final ? null : h("span", { class: "muted", text: " will retry" })),
      h("td", { class: "num", text: ms(r.duration_ms) }),
      h("td", { text: r.worker }),
    )));
    if (!failures.firstChild) failures.append(h("p", { class: "muted", id: "no-failures", text: "No failure so far." }));
    // Stamped after the DOM update, in the frame that paints it.
    const now = Date.now();
    for (const field of fresh) if (!(field in live.painted)) live.painted[field] = now;
    fresh = [];
  };
  const schedule = () => {
    if (!scheduled) { scheduled = true; requestAnimationFrame(paint); }
  };

  // The newest failures are shown, the older ones beyond this many only counted: a
  // suite of thousands of failures would otherwise make the page too heavy to follow.
  const SHOWN_FAILURES = 300;
  let shownFailures = 0;
  let hiddenFailures = 0;
  const more = h("p", { class: "muted", id: "more-failures" });
  const addFailure = (r) => {
    const none = document.getElementById("no-failures");
    if (none) none.remove();
    shownFailures += 1;
    if (shownFailures > SHOWN_FAILURES) {
      const oldest = more.isConnected ? more.previousElementSibling : failures.lastElementChild;
      if (oldest) oldest.remove();
      shownFailures -= 1;
      hiddenFailures += 1;
      more.textContent = `and ${hiddenFailures} earlier failures (each test's page has its attempts)`;
      if (!more.isConnected) failures.append(more);
    }
    const outputs = [];
    if (r.stdout_tail) outputs.push(h("div", { class: "stream", text: "stdout" }), h("pre", { class: "out", text: r.stdout_tail }));
    if (r.stderr_tail) outputs.push(h("div", { class: "stream", text: "stderr" }), h("pre", { class: "out err", text: r.stderr_tail }));
    const card = h("div", { class: "failure", "data-test": r.test, "data-attempt": r.attempt },
      h("div", { class: "failure-head" },
        badge(r.status), " ", testLink(suiteId, r.test),
        h("span", { class: "muted", text: ` attempt ${r.attempt}${r.final ? "" : " (will retry)"} · ${ms(r.duration_ms)} · ${r.worker}` +
          (r.exit_code !== undefined ? ` · exit ${r.exit_code}` : "") })),
      r.reason ? h("div", { class: "reason", text: r.reason }) : null,
      outputs.length ? h("details", { open: true }, h("summary", { text: "Output (end)" }), outputs) : null,
    );
    failures.prepend(card);
    const cards = failureCards.get(r.test) || [];
    cards.push(card);
    failureCards.set(r.test, cards);
  };

  // A test that failed and then passed on a retry: its failures stay, marked so.
  const passedLater = (r) => {
    for (const card of failureCards.get(r.test) || []) {
      card.classList.add("recovered");
      card.querySelector(".failure-head").append(
        h("span", { class: "badge s-flaky", text: `passed on attempt ${r.attempt}` }));
    }
  };

  const take = (r) => {
    const field = `${r.test}#${r.attempt}`;
    if (results.has(field)) return; // A replay or a snapshot may repeat a result.
    results.set(field, r);
    live.results += 1;
    if (r.final && !finals.has(r.test)) {
      finals.set(r.test, r);
      tally[r.status] = (tally[r.status] || 0) + 1;
      if (r.status === "passed" && r.attempt > 1) retried += 1;
    }
    latest.unshift(r);
    if (latest.length > 50) latest.pop();
    if (r.status !== "passed" && r.status !== "skipped") addFailure(r);
    else if (r.status === "passed" && r.attempt > 1) passedLater(r);
    fresh.push(field);
    schedule();
  };

  const ended = async (state) => {
    if (live.ended) return; // A snapshot's end may come again after it.
    live.ended = state;
    stateBadge.replaceChildren(badge(state));
    status.textContent = "ended";
    status.className = "conn ended";
    source.close();
    try {
      const row = await getJson(`/ui/api/suites/${suiteId}`);
      if (row.summary) {
        counts.after(h("p", { class: "summary", id: "summary",
          text: `${row.summary.passed} passed, ${failedCount(row.summary)} failed, ${row.summary.skipped} skipped` +
            ` · ${row.summary.success_rate.toFixed(1)}% · wall ${ms(row.summary.wall_ms)}` }));
      }
    } catch (_) { /* The counts already say it. */ }
  };

  const source = new EventSource(`/ui/api/suites/${suiteId}/events`);
  source.addEventListener("open", () => {
    live.opens += 1;
    status.textContent = "live";
    status.className = "conn live";
  });
  source.addEventListener("error", () => {
    if (live.ended) return;
    live.errors += 1;
    // CLOSED: the server refused the stream (signed out, too many views); the browser
    // will not try again by itself.
    const closed = source.readyState === EventSource.CLOSED;
    status.textContent = closed ? "disconnected: reload the page" : "reconnecting…";
    status.className = "conn down";
  });
  source.addEventListener("suite", (e) => {
    suite = JSON.parse(e.data);
    title.textContent = suite.name;
    document.title = `${suite.name} · isotest`;
    schedule();
  });
  source.addEventListener("snapshot", (e) => {
    live.snapshots += 1;
    for (const r of JSON.parse(e.data).results) take(r);
    schedule();
  });
  source.addEventListener("result", (e) => take(JSON.parse(e.data)));
  source.addEventListener("end", (e) => ended(JSON.parse(e.data).state));
  leave = () => source.close();
}

// ---------- a test's attempts and history ----------

async function testPage(suiteId, test) {
  show(h("p", { class: "muted", text: "Loading…" }));
  let data;
  try {
    data = await getJson(`/ui/api/suites/${suiteId}/attempts?test=${encodeURIComponent(test)}`);
  } catch (error) {
    show(h("p", { class: "error", text: `Could not load the test: ${error.message}` }));
    return;
  }
  const history = h("div", { id: "history" }, h("p", { class: "muted", text: "Looking for this test's history…" }));
  show(
    h("div", { class: "crumbs" }, h("a", { href: `#/suites/${suiteId}`, text: data.suite }), " › "),
    h("h1", { id: "test-name", text: data.test }),
    h("h2", { text: `Attempts (${data.attempts.length})` }),
    data.attempts.length
      ? h("div", { id: "attempts" }, data.attempts.map(attemptView))
      : h("p", { class: "muted", text: "No attempt has a result yet." }),
    h("h2", { text: "History" }),
    history,
  );
  const runs = await optionalJson(`/v1/tests/${encodeURIComponent(test)}/history?suite=${encodeURIComponent(data.suite)}`);
  history.replaceChildren(runs ? historyView(runs) : h("p", { class: "muted",
    text: "This server keeps no test history (it needs the history store)." }));
}

function attemptView(a) {
  const outputs = [];
  if (a.stdout) outputs.push(h("div", { class: "stream", text: "stdout" }), h("pre", { class: "out", text: a.stdout }));
  if (a.stderr) outputs.push(h("div", { class: "stream", text: "stderr" }), h("pre", { class: "out err", text: a.stderr }));
  return h("section", { class: "attempt", "data-attempt": a.attempt },
    h("div", { class: "failure-head" }, badge(a.status), h("strong", { text: ` attempt ${a.attempt}` }),
      h("span", { class: "muted", text: ` · ${ms(a.duration_ms)} · ${a.worker} · ${new Date(a.started_at_ms).toLocaleTimeString()}` +
        (a.exit_code !== undefined ? ` · exit ${a.exit_code}` : "") + (a.final ? "" : " · retried") })),
    a.reason ? h("div", { class: "reason", text: a.reason }) : null,
    a.cases && a.cases.length ? h("ul", { class: "cases" }, a.cases.map((c) =>
      h("li", {}, badge(c.status), ` ${c.name}`))) : null,
    outputs.length ? h("details", { open: a.status !== "passed" }, h("summary", { text: "Output" }), outputs)
      : h("p", { class: "muted", text: "No output." }),
  );
}

// The history store's runs of a test (an array, or {runs: [...]}), as a chart of
// durations coloured by outcome, newest on the right, and a table.
function historyView(data) {
  const runs = Array.isArray(data) ? data : (data.runs || []);
  if (!runs.length) return h("p", { class: "muted", text: "No earlier run of this test." });
  const ordered = [...runs].reverse();
  const width = 600, height = 120, gap = 2;
  const max = Math.max(1, ...ordered.map((r) => r.duration_ms || 0));
  const w = Math.max(2, Math.floor(width / ordered.length) - gap);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  ordered.forEach((r, i) => {
    const bar = document.createElementNS(ns, "rect");
    const barHeight = Math.max(2, Math.round(((r.duration_ms || 0) / max) * (height - 10)));
    bar.setAttribute("x", String(i * (w + gap)));
    bar.setAttribute("y", String(height - barHeight));
    bar.setAttribute("width", String(w));
    bar.setAttribute("height", String(barHeight));
    bar.setAttribute("class", `s-${r.status}`);
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${r.status} · ${ms(r.duration_ms)}${r.commit ? ` · ${r.commit}` : ""}`;
    bar.append(tip);
    svg.append(bar);
  });
  const keys = ["finished_at_ms", "suite_name", "status", "duration_ms", "attempts", "flaky", "commit", "branch", "worker"]
    .filter((k) => runs.some((r) => r[k] !== undefined));
  return h("div", {}, svg,
    h("table", { class: "results" },
      h("thead", {}, h("tr", {}, keys.map((k) => h("th", { text: k.replace(/_ms$/, "").replace("_", " ") })))),
      h("tbody", {}, runs.slice(0, 20).map((r) => h("tr", {}, keys.map((k) => h("td", {},
        k === "status" ? badge(String(r[k])) : k === "duration_ms" ? ms(r[k])
          : k === "finished_at_ms" ? new Date(r[k]).toLocaleString() : String(r[k] ?? ""))))))));
}

// ---------- flaky and quarantined tests (from the history store) ----------

// `GET /v1/flaky`: the history store's flaky tests, highest score first, each with
// its newest failure (`last_failure`, a run of the test with its suite's id); and
// `GET /v1/quarantine`: the quarantine entries that apply to this token's suites, with
// their scope, reason and when each was added. Both are scoped to the token.
async function flakyPage() {
  show(h("h1", { text: "Flaky tests" }), h("p", { class: "muted", text: "Loading…" }));
  const [data, quarantine] = await Promise.all([optionalJson("/v1/flaky"), optionalJson("/v1/quarantine")]);
  if (!data) {
    show(h("h1", { text: "Flaky tests" }), h("p", { class: "muted", text: "This server keeps no test history." }));
    return;
  }
  const rows = Array.isArray(data) ? data : (data.tests || []);
  show(h("h1", { text: "Flaky tests" }),
    h("p", { class: "muted", text: "Tests that passed on a retry, or gave different verdicts for the same input, over the last 30 days." }),
    rows.length ? h("table", { class: "results", id: "flaky" },
      h("thead", {}, h("tr", {}, ["Test", "Suite", "Score", "Runs", "Last failure"].map((t) => h("th", { text: t })))),
      h("tbody", {}, rows.map((r) => {
        const last = r.last_failure;
        return h("tr", {},
          h("td", {}, last && last.suite_id ? testLink(last.suite_id, r.test) : String(r.test)),
          h("td", { text: String(r.suite ?? "") }),
          h("td", { class: "num", text: typeof r.score === "number" ? `${Math.round(r.score * 100)}%` : "" }),
          h("td", { class: "num", text: r.runs !== undefined ? `${r.signals ?? "?"} of ${r.runs}` : "" }),
          h("td", {}, last ? [badge(String(last.status)), ` ${ago(last.finished_at_ms)}`] : ""));
      })))
      : h("p", { class: "muted", text: "No test is flaky." }),
    quarantineSection(quarantine));
}

// The quarantine: tests that still run and are reported, whose failures do not fail
// their suite (`isotest quarantine add`, or the automatic policy).
function quarantineSection(entries) {
  const rows = Array.isArray(entries) ? entries : [];
  return h("section", { id: "quarantine-section" },
    h("h2", { text: "Quarantined tests" }),
    h("p", { class: "muted", text: "They run and are in every report, marked; their failures do not fail the suite." }),
    rows.length ? h("table", { class: "results", id: "quarantine" },
      h("thead", {}, h("tr", {}, ["Test", "Applies to", "Reason", "Added"].map((t) => h("th", { text: t })))),
      h("tbody", {}, rows.map((q) => h("tr", {},
        h("td", { text: String(q.test) }),
        h("td", { text: scopeText(String(q.scope)) }),
        h("td", { text: String(q.reason ?? "") }),
        h("td", { text: typeof q.added_at_ms === "number" ? ago(q.added_at_ms) : "" })))))
      : h("p", { class: "muted", text: entries ? "No test is quarantined." : "The quarantine could not be read." }));
}

function scopeText(scope) {
  if (scope === "*") return "every suite";
  if (scope.startsWith("token:")) return `token ${scope.slice(6)}`;
  if (scope.startsWith("repo:")) return `repository ${scope.slice(5)}`;
  return scope;
}

start();
