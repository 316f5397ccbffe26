// Forewarn crew page. No framework, no outside requests.
// Every string from the agent (asset names, notes, feature names) came from MQTT or a
// person: it is only ever put on the page with textContent / setAttribute, never as HTML.
//
// What the list says is always one of: "Loading…", the alerts of a fresh load (or "No open
// alerts" when a fresh load really returned none), or the last known alerts marked as out of
// date (agent unreachable, live updates lost) or hidden behind "Signed out".
"use strict";

const HISTORY_PAGE = 25;
const DEVICE_KEY = "forewarn.device";  // the label only: the session itself is an HttpOnly cookie
const MUTATE = { "X-Forewarn-Request": "1" };  // the agent refuses cookie changes without it
const state = {
  session: null, model: null, rules: null, historyOffset: 0, refreshing: false, again: false,
  loaded: false,          // a load has succeeded at least once
  lastOk: null,           // epoch s of the last successful load
  failSince: null,        // epoch s of the first failed load since the last good one
  failWhy: "",
  liveDownSince: null,    // epoch s the live stream dropped (null: up, or never tried)
  needSignIn: false,      // reads need a signed-in device
  signedOutWhy: "",
  openItems: [],
  focus: "",              // data-focus key of the control to refocus after a re-render
};

const $ = (id) => document.getElementById(id);
const now = () => Date.now() / 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function toast(msg, bad) {
  const t = $("toast");
  t.textContent = msg;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

async function api(path, options) {
  const opts = Object.assign({ headers: {}, credentials: "same-origin" }, options || {});
  if (opts.method && opts.method !== "GET") Object.assign(opts.headers, MUTATE);
  if (opts.body !== undefined) opts.headers["Content-Type"] = "application/json";
  let res;
  try { res = await fetch(path, opts); } catch (e) {
    const err = new Error("no answer from the agent");
    err.status = 0;
    throw err;
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `HTTP ${res.status}`;
    const err = new Error(detail);
    err.status = res.status;
    err.retryAfter = res.headers.get("Retry-After");
    throw err;
  }
  return data;
}

// ---- sign-in: once per device, remembered by the agent ------------------------------------

async function signIn(token, device) {
  const msg = $("signin-msg");
  msg.textContent = "Signing in…";
  try {
    state.session = await api("/api/session", { method: "POST", body: JSON.stringify({ token, device }) });
    localStorage.setItem(DEVICE_KEY, device);
    state.signedOutWhy = "";
    msg.textContent = "";
    if (!state.model) await loadModel();
    if (state.liveDownSince !== null || !stream.source) live();
  } catch (e) {
    state.session = null;
    if (e.status === 401) msg.textContent = "Token refused — check it and try again.";
    else if (e.status === 429) msg.textContent = `Token refused too often — try again in ${e.retryAfter || "a few"} s.`;
    else msg.textContent = `Sign-in failed: ${e.message}`;
  }
  showWho();
  refresh();
}

async function signOut() {
  try { await api("/api/session", { method: "DELETE" }); } catch (e) { /* signed out anyway */ }
  state.session = null;
  state.signedOutWhy = "Signed out.";
  showWho();
  refresh();
}

function showWho() {
  const s = state.session;
  $("signin").hidden = Boolean(s);
  $("who").hidden = !s;
  $("person").textContent = s ? s.person : "";
  $("device-name").textContent = s ? s.device : "";
  $("devices-section").hidden = !s;
  if (!s && state.signedOutWhy && !$("signin-msg").textContent) $("signin-msg").textContent = state.signedOutWhy;
}

// The session ended elsewhere (revoked, expired, person removed): say so, show the form.
function sessionEnded() {
  if (!state.session) return;
  state.session = null;
  state.signedOutWhy = "Signed out — this device's session was revoked or has expired. Sign in again.";
  $("signin-msg").textContent = state.signedOutWhy;
  showWho();
}

// ---- the status banner and the list's state -------------------------------------------------

function render() {
  const banner = $("banner"), list = $("list-state"), cards = $("open-alerts");
  let text = "", cls = "banner";
  if (state.needSignIn && !state.session) {
    text = "Signed out — this agent shows alerts only to signed-in devices. Sign in above.";
    cls += " signedout";
  } else if (state.failSince !== null) {
    text = `Cannot reach the agent since ${Words.clock(state.failSince)} — the list below may be out of date` +
      (state.lastOk ? ` (last updated ${Words.when(state.lastOk)}).` : ".");
    cls += " stale";
  } else if (state.liveDownSince !== null) {
    text = `Live updates lost since ${Words.clock(state.liveDownSince)} — the list below may be out of date` +
      (state.lastOk ? ` (last checked ${Words.clock(state.lastOk)}).` : ".");
    cls += " stale";
  }
  banner.textContent = text;
  banner.className = cls;
  banner.hidden = !text;
  const stale = cls.includes("stale");
  cards.classList.toggle("stale", stale);
  const n = state.openItems.length;
  if (state.needSignIn && !state.session) list.textContent = "Signed out.";
  else if (!state.loaded) list.textContent = state.failSince !== null ? "Not loaded: the agent does not answer." : "Loading…";
  else if (n === 0) list.textContent = stale ? `No open alerts as of ${Words.when(state.lastOk)} — may be out of date.` : "No open alerts.";
  else list.textContent = stale ? `Last known alerts, as of ${Words.when(state.lastOk)}:` : "";
  list.hidden = !list.textContent;
  $("open-count").textContent = state.loaded && n ? `(${n})` : "";
}

// ---- open alerts -----------------------------------------------------------------------

function levels() {
  const t = (state.model && state.model.thresholds) || state.rules || {};
  return ["warning", "critical"].filter((k) => Number.isFinite(t[k])).map((k) => [k, t[k]]);
}

function sparkline(history) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 220, H = 48, P = 3;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("preserveAspectRatio", "none");  // stretch to the card's width
  svg.setAttribute("role", "img");
  const pts = (history || []).filter((p) => Array.isArray(p) && Number.isFinite(p[1]));
  svg.setAttribute("aria-label", `score history, ${pts.length} windows; dashed lines are the alert levels`);
  if (pts.length < 2) return svg;
  const lv = levels();
  const ys = pts.map((p) => p[1]).concat(lv.map((l) => l[1]));
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0], tspan = t1 - t0 || 1;
  const x = (t) => P + ((t - t0) / tspan) * (W - 2 * P);
  const y = (v) => H - P - ((v - lo) / span) * (H - 2 * P);
  for (const [name, v] of lv) {
    const line = document.createElementNS(NS, "line");
    line.setAttribute("x1", P); line.setAttribute("x2", W - P);
    line.setAttribute("y1", y(v)); line.setAttribute("y2", y(v));
    line.setAttribute("class", `level ${name}`);
    svg.append(line);
  }
  const poly = document.createElementNS(NS, "polyline");
  poly.setAttribute("points", pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
  poly.setAttribute("class", "trace");
  svg.append(poly);
  return svg;
}

// The driving signals: reading and unit against the normal band first, the feature second.
function signalsList(alert) {
  const list = el("ul", { class: "signals" });
  for (const f of alert.top_features || []) {
    const item = el("li", {});
    if (f.signal) {
      const r = Words.reading(f), band = Words.band(f);
      item.append(el("strong", { class: "sig", text: f.signal }), " ",
        el("span", { class: `reading${r.side ? " out" : ""}`, text: r.text }));
      if (r.side) item.append(" ", el("span", { class: "side", text: `(${r.side} ${f.band === "training range" ? "normal" : "range"})` }));
      if (band) item.append(el("span", { class: "band", text: ` — ${band}` }));
      item.append(el("span", { class: "feat", text: `${f.feature}${Words.deviation(f) ? ", " + Words.deviation(f) : ""}` }));
    } else {
      item.append(el("strong", { class: "sig", text: f.feature }),
        el("span", { class: "feat", text: Words.deviation(f) }));
    }
    list.append(item);
  }
  if (!list.children.length) list.append(el("li", { class: "muted", text: "no explanation from this model" }));
  return list;
}

// What raised an alert (edge/alerts/payload.py): the model, a reading beyond what the
// model was trained on, or an impossible reading (the sensor itself).
function kindOf(a) {
  return a.kind || (a.details && a.details.kind) || "model";
}

function limitText(a) {
  const d = a.detail || {}, unit = d.unit ? ` ${d.unit}` : "";
  if (kindOf(a) === "sensor_fault" && d.worst === null) return `${d.signal}: sends ${d.worst_text || "no number"}, kept out of the model`;
  if (kindOf(a) === "sensor_fault") return `${d.signal}: impossible reading ${Words.num(d.worst)}${unit} (kept out of the model)`;
  const side = d.bound === "training_min" ? "below" : "above";
  return `${d.signal}: ${Words.num(d.value)}${unit} now, worst ${Words.num(d.worst)}${unit}, ${side} the trained range limit ${Words.num(d.limit)}${unit}`;
}

function alertCard(a) {
  const kind = kindOf(a);
  const card = el("article", { class: `card sev-${a.severity} st-${a.state} kind-${kind}`, "data-alert-id": a.id });
  const label = Words.kindLabel(kind);
  card.append(el("header", {},
    el("h3", { class: "asset", text: a.asset }),
    el("span", { class: `badge ${a.severity}`, text: a.severity }),
    el("span", { class: `badge state ${a.state}`, text: a.state }),
    label ? el("span", { class: `badge kind ${kind}`, text: label }) : ""));
  const m = state.model;
  const since = el("p", { class: "since" }, "Opened ", el("time", { text: Words.when(a.opened_ts) }));
  if (kind === "model") {
    const what = `${Words.score(m, a.score)}${Number.isFinite(a.peak_score) && Words.score(m, a.peak_score) !== Words.score(m, a.score) ? ` (${Words.peak(m, a.peak_score)})` : ""}`;
    card.append(el("p", { class: "score", text: what }), since,
      el("p", { class: "label", text: "Check first" }), signalsList(a), sparkline(a.history));
  } else {
    card.append(el("p", { class: "limit-detail", text: limitText(a) }), since);
  }
  if (a.ack_by) card.append(el("p", { class: "ack", text: `Acknowledged by ${a.ack_by} at ${Words.when(a.ack_ts)}${a.ack_note ? ` — “${a.ack_note}”` : ""}` }));
  if (a.state === "shelved") card.append(el("p", { class: "ack", text: `Shelved by ${a.shelved_by} until ${Words.until(a.shelved_until)}` }));

  const note = el("input", { class: "note", type: "text", maxlength: 2000, placeholder: "Note (what you saw or did)",
                             "aria-label": `note for ${a.asset}`, "data-alert-id": a.id });
  const actions = el("div", { class: "actions" }, note);
  const button = (label, cls, verb) => {
    const b = el("button", { type: "button", class: cls, text: label, "data-focus": `${a.id}:${verb}`,
                             "aria-label": `${label}: ${a.asset}` });
    b.addEventListener("click", () => act(a, verb, note.value, b));
    actions.append(b);
  };
  if (!a.ack_ts) button("Acknowledge", "ack-btn primary", "ack");
  button("Resolve", "resolve-btn", "resolve");
  if (a.state === "open" || a.state === "acknowledged") button("Shelve 1 h", "shelve-btn quiet", "shelve");
  if (a.state === "shelved") button("Unshelve", "shelve-btn quiet", "unshelve");
  if (!state.session) actions.append(el("span", { class: "muted hint", text: "Sign in to act on alerts." }));
  card.append(actions);
  return card;
}

const DONE = { ack: "acknowledged", resolve: "resolved", shelve: "shelved for 1 h", unshelve: "unshelved" };

async function act(alert, verb, note, btn) {
  if (!state.session) {
    toast("Sign this device in first.", true);
    $("token").focus();
    return;
  }
  state.focus = btn.dataset.focus;  // a disabled button drops the focus: put it back after
  btn.disabled = true;
  const body = verb === "shelve" ? { minutes: 60, note: note || null } : { note: note || null };
  try {
    await api(`/api/alerts/${encodeURIComponent(alert.id)}/${verb}`, { method: "POST", body: JSON.stringify(body) });
    const note = $("open-alerts").querySelector(`input.note[data-alert-id="${alert.id}"]`);
    if (note) note.value = "";
    toast(`${alert.asset}: ${DONE[verb]} by ${state.session.person}`);
  } catch (e) {
    if (e.status === 401) sessionEnded();
    toast(`Could not ${verb === "ack" ? "acknowledge" : verb}: ${e.message}`, true);
  }
  btn.disabled = false;
  refresh();
}

// Re-rendering must not drop a half-typed note or the keyboard focus.
function replaceCards(items) {
  const box = $("open-alerts");
  const notes = {};
  for (const n of box.querySelectorAll("input.note")) if (n.value) notes[n.dataset.alertId] = n.value;
  const active = document.activeElement;
  const focus = (active && box.contains(active) ? (active.dataset.focus || (active.classList.contains("note") ? `note:${active.dataset.alertId}` : "")) : "") || state.focus;
  state.focus = "";
  box.replaceChildren(...items.map(alertCard));
  for (const n of box.querySelectorAll("input.note")) if (notes[n.dataset.alertId]) n.value = notes[n.dataset.alertId];
  if (focus) {
    const target = focus.startsWith("note:")
      ? box.querySelector(`input.note[data-alert-id="${focus.slice(5)}"]`)
      : box.querySelector(`[data-focus="${focus}"]`) || box.querySelector(`[data-alert-id="${focus.split(":")[0]}"] button`);
    if (target) target.focus();
  }
}

// ---- assets, history, devices -------------------------------------------------------------

function assetRow(s) {
  const toggle = el("button", { type: "button", class: "quiet maint-btn", text: s.maintenance ? "End maintenance" : "Start maintenance",
                                "aria-label": `${s.maintenance ? "End" : "Start"} maintenance: ${s.asset}` });
  toggle.addEventListener("click", async () => {
    if (!state.session) { toast("Sign this device in first.", true); $("token").focus(); return; }
    try {
      await api(`/api/assets/${encodeURIComponent(s.asset)}/maintenance`, { method: "POST", body: JSON.stringify({ on: !s.maintenance }) });
      toast(`${s.asset}: maintenance ${s.maintenance ? "ended" : "started"} by ${state.session.person}`);
    } catch (e) {
      if (e.status === 401) sessionEnded();
      toast(`Could not change maintenance: ${e.message}`, true);
    }
    refresh();
  });
  const data = s.age_s === null ? s.freshness : `${s.freshness}, ${Words.when(s.last_seen)}`;
  return el("tr", { class: `st-${s.state}` },
    el("td", { text: s.asset }),
    el("td", {}, el("span", { class: `badge state ${s.state}`, text: s.state === "normal" ? "normal" : `${s.state} · ${s.severity}` })),
    el("td", { text: Words.score(state.model, s.last_score) }),
    el("td", { class: `fresh-${s.freshness.replace(" ", "-")}`, text: data }),
    el("td", {}, el("span", { text: s.maintenance ? "in maintenance " : "" }), toggle));
}

function who(name, ts, note) {
  return name ? `${name}, ${Words.when(ts)}${note ? ": " + note : ""}` : "—";
}

function historyRow(a) {
  return el("tr", { "data-alert-id": a.id },
    el("td", { text: a.id }), el("td", { text: a.asset }),
    el("td", {}, el("span", { class: `badge ${a.severity}`, text: a.severity }),
       el("span", { class: "kind-label", text: Words.kindLabel(kindOf(a)) ? ` ${Words.kindLabel(kindOf(a))}` : "" })),
    el("td", { text: a.state }), el("td", { text: Words.when(a.opened_ts) }),
    el("td", { text: who(a.ack_by, a.ack_ts, a.ack_note) }),
    el("td", { text: who(a.resolved_by, a.resolved_ts, a.resolved_note) }),
    el("td", { text: (a.top_signals || []).join(", ") || "—" }));
}

function historyQuery(offset) {
  const q = new URLSearchParams({ limit: HISTORY_PAGE, offset });
  const asset = $("f-asset").value.trim(), st = $("f-state").value, sev = $("f-severity").value, since = $("f-since").value;
  if (asset) q.set("asset", asset);
  if (st) q.set("state", st);
  if (sev) q.set("severity", sev);
  if (since) q.set("since", String(Math.floor(now() - Number(since))));
  return `/api/alerts?${q}`;
}

async function loadHistory(append) {
  const offset = append ? state.historyOffset : 0;
  const page = await api(historyQuery(offset));
  const body = $("history").tBodies[0];
  const rows = page.items.map(historyRow);
  if (append) body.append(...rows); else body.replaceChildren(...rows);
  state.historyOffset = offset + page.items.length;
  $("h-count").textContent = `${state.historyOffset} of ${page.total}`;
  $("more").hidden = state.historyOffset >= page.total;
}

async function loadDevices() {
  if (!state.session) return;
  const page = await api("/api/sessions");
  $("devices").tBodies[0].replaceChildren(...page.items.map((s) => {
    const b = el("button", { type: "button", class: "quiet revoke-btn", text: s.current ? "Sign out" : "Revoke",
                             "aria-label": `${s.current ? "Sign out" : "Revoke"}: ${s.person} on ${s.device}` });
    b.addEventListener("click", async () => {
      if (s.current) return signOut();
      try {
        await api(`/api/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE" });
        toast(`${s.person} on ${s.device}: signed out by ${state.session.person}`);
      } catch (e) { toast(`Could not revoke: ${e.message}`, true); }
      refresh();
    });
    return el("tr", { "data-session-id": s.id }, el("td", { text: s.person }),
      el("td", { text: `${s.device}${s.current ? " (this device)" : ""}` }),
      el("td", { text: Words.when(s.created) }), el("td", { text: Words.until(s.expires) }), el("td", {}, b));
  }));
}

// ---- loading --------------------------------------------------------------------------------

async function checkSession() {
  try {
    state.session = await api("/api/session");
  } catch (e) {
    if (e.status === 401) sessionEnded(); else throw e;
  }
  showWho();
}

async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    if (state.session) await checkSession();
    const [open, assets] = await Promise.all([api("/api/alerts?state=unresolved&limit=200"), api("/api/assets")]);
    state.needSignIn = false;
    state.openItems = open.items;
    replaceCards(open.items);
    $("assets").tBodies[0].replaceChildren(...assets.items.map(assetRow));
    await loadHistory(false);
    await loadDevices();
    state.loaded = true;
    state.lastOk = now();
    state.failSince = null;
  } catch (e) {
    if (e.status === 401) {
      state.needSignIn = true;
      state.openItems = [];
      replaceCards([]);
      sessionEnded();
    } else if (state.failSince === null) {
      state.failSince = now();
      state.failWhy = e.message;
    }
  } finally {
    state.refreshing = false;
    render();
    if (state.again) { state.again = false; refresh(); }
  }
}

// ---- live updates: server-sent events, with polling as the fallback ------------------------

const stream = { source: null, timer: null };

// (Re)connects the stream: also after signing in, since reads may need the session cookie.
function live() {
  const badge = $("live");
  const poll = (ms) => { clearInterval(stream.timer); stream.timer = setInterval(refresh, ms); };
  if (stream.source) stream.source.close();
  let source = null;
  try { source = new EventSource("/api/events"); } catch (e) { source = null; }
  stream.source = source;
  // Polling is the backstop: slow while the stream is up, fast while it is down.
  poll(source ? 30000 : 5000);
  if (!source) return;
  source.addEventListener("open", () => {
    badge.textContent = "live";
    badge.className = "live ok";
    const was = state.liveDownSince;
    state.liveDownSince = null;
    poll(30000);
    if (was !== null) refresh(); else render();
  });
  source.addEventListener("change", () => refresh());
  source.addEventListener("error", () => {
    if (stream.source !== source) return;  // replaced meanwhile
    if (state.liveDownSince === null) state.liveDownSince = now();
    badge.textContent = source.readyState === EventSource.CLOSED ? "live updates off: checking every 5 s" : "live updates lost: reconnecting…";
    badge.className = "live bad";
    poll(5000);
    refresh();  // find out at once whether the agent itself still answers
  });
}

async function loadModel() {
  try { state.model = await api("/api/model"); } catch (e) { state.model = null; }
  $("legend").textContent = Words.legend(state.model);
}

async function start() {
  $("signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim(), device = $("device").value.trim();
    $("token").value = "";
    signIn(token, device);
  });
  $("device").value = localStorage.getItem(DEVICE_KEY) || "";
  $("signout").addEventListener("click", signOut);
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadHistory(false).catch((e) => toast(e.message, true)); });
  $("more").addEventListener("click", () => loadHistory(true).catch((e) => toast(e.message, true)));
  render();
  try {
    const st = await api("/api/status");
    $("site").textContent = st.site;
    state.rules = st.rules || null;
  } catch (e) { /* refresh() reports */ }
  await loadModel();
  try { state.session = await api("/api/session"); } catch (e) { state.session = null; }
  showWho();
  await refresh();
  live();  // the periodic refresh also keeps the "… ago" times current
}

document.addEventListener("DOMContentLoaded", start);
