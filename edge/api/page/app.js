// Forewarn crew page. No framework, no outside requests.
// Every string from the agent (asset names, notes, feature names) came from MQTT or a
// person: it is only ever put on the page with textContent / setAttribute, never as HTML.
"use strict";

const TOKEN_KEY = "forewarn.token";
const HISTORY_PAGE = 25;
const state = { token: sessionStorage.getItem(TOKEN_KEY) || "", person: "", rules: null,
                historyOffset: 0, refreshing: false, again: false };

const $ = (id) => document.getElementById(id);

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

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "—";
  return new Date(ts * 1000).toLocaleString();
}

function ago(ts) {
  if (ts === null || ts === undefined) return "—";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function fmtScore(x) {
  if (x === null || x === undefined) return "—";
  return Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(3);
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
  const opts = Object.assign({ headers: {} }, options || {});
  if (state.token) opts.headers.Authorization = `Bearer ${state.token}`;
  if (opts.body !== undefined) opts.headers["Content-Type"] = "application/json";
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `HTTP ${res.status}`;
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return data;
}

// ---- sign-in -------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  try {
    const who = await api("/api/whoami");
    state.person = who.person;
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch (e) {
    state.token = "";
    state.person = "";
    sessionStorage.removeItem(TOKEN_KEY);
    toast(`Sign-in failed: ${e.message}`, true);
  }
  showWho();
  refresh();
}

function showWho() {
  $("signin").hidden = Boolean(state.person);
  $("who").hidden = !state.person;
  $("person").textContent = state.person;
}

// ---- open alerts -----------------------------------------------------------------

function sparkline(history) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 220, H = 48, P = 3;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("preserveAspectRatio", "none");  // stretch to the card's width
  svg.setAttribute("role", "img");
  const pts = (history || []).filter((p) => Array.isArray(p) && Number.isFinite(p[1]));
  svg.setAttribute("aria-label", `score history, ${pts.length} windows`);
  if (pts.length < 2) return svg;
  const levels = [];
  if (state.rules) for (const k of ["warning", "critical"]) {
    if (Number.isFinite(state.rules[k])) levels.push([k, state.rules[k]]);
  }
  const ys = pts.map((p) => p[1]).concat(levels.map((l) => l[1]));
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0], tspan = t1 - t0 || 1;
  const x = (t) => P + ((t - t0) / tspan) * (W - 2 * P);
  const y = (v) => H - P - ((v - lo) / span) * (H - 2 * P);
  for (const [name, v] of levels) {
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

function signalsList(alert) {
  const list = el("ul", { class: "signals" });
  for (const f of alert.top_features || []) {
    const dev = Number.isFinite(f.deviation) ? `${f.deviation > 0 ? "+" : ""}${f.deviation.toFixed(1)} σ` : "";
    list.append(el("li", {}, el("strong", { text: f.signal || f.feature }),
                   el("span", { class: "feat", text: f.signal ? ` ${f.feature}` : "" }),
                   el("span", { class: "dev", text: ` ${dev}` })));
  }
  if (!list.children.length) list.append(el("li", { class: "muted", text: "no explanation from this model" }));
  return list;
}

// What raised an alert (edge/alerts/payload.py): the model, a reading beyond what the
// model was trained on, or an impossible reading (the sensor itself).
const KIND_LABEL = { model: "model", limit: "outside training range", sensor_fault: "sensor fault" };

function limitText(a) {
  const d = a.detail || {}, unit = d.unit ? ` ${d.unit}` : "";
  if (a.kind === "sensor_fault") return `${d.signal}: impossible reading ${fmtScore(d.worst)}${unit} (kept out of the model)`;
  const side = d.bound === "training_min" ? "below" : "above";
  return `${d.signal}: ${fmtScore(d.value)}${unit} now, worst ${fmtScore(d.worst)}${unit}, ${side} the trained range limit ${fmtScore(d.limit)}${unit}`;
}

function alertCard(a) {
  const kind = a.kind || "model";
  const card = el("article", { class: `card sev-${a.severity} st-${a.state} kind-${kind}`, "data-alert-id": a.id });
  card.append(el("header", {},
    el("h3", { class: "asset", text: a.asset }),
    el("span", { class: `badge ${a.severity}`, text: a.severity }),
    el("span", { class: `badge kind ${kind}`, text: KIND_LABEL[kind] || kind }),
    el("span", { class: `badge state ${a.state}`, text: a.state })));
  const since = el("p", { class: "since" }, "since ", el("time", { title: fmtTime(a.opened_ts), text: ago(a.opened_ts) }),
                   kind === "model" ? ` · score ${fmtScore(a.score)} (worst ${fmtScore(a.peak_score)})` : "");
  if (kind === "model") card.append(since, el("p", { class: "label", text: "Check first" }), signalsList(a), sparkline(a.history));
  else card.append(since, el("p", { class: "limit-detail", text: limitText(a) }));
  if (a.ack_by) card.append(el("p", { class: "ack", text: `Acknowledged by ${a.ack_by} ${ago(a.ack_ts)}${a.ack_note ? ` — “${a.ack_note}”` : ""}` }));
  if (a.state === "shelved") card.append(el("p", { class: "ack", text: `Shelved by ${a.shelved_by} until ${fmtTime(a.shelved_until)}` }));

  const note = el("input", { class: "note", type: "text", maxlength: 2000, placeholder: "Note (what you saw or did)", "aria-label": "note" });
  const actions = el("div", { class: "actions" }, note);
  const button = (label, cls, fn) => {
    const b = el("button", { type: "button", class: cls, text: label });
    b.addEventListener("click", () => act(a, fn, note.value, b));
    actions.append(b);
  };
  if (!a.ack_ts) button("Acknowledge", "ack-btn primary", "ack");
  button("Resolve", "resolve-btn", "resolve");
  if (a.state === "open" || a.state === "acknowledged") button("Shelve 1 h", "shelve-btn quiet", "shelve");
  if (a.state === "shelved") button("Unshelve", "shelve-btn quiet", "unshelve");
  card.append(actions);
  return card;
}

async function act(alert, verb, note, btn) {
  if (!state.person) {
    toast("Sign in with your token first.", true);
    $("token").focus();
    return;
  }
  btn.disabled = true;
  const body = verb === "shelve" ? { minutes: 60, note: note || null } : { note: note || null };
  try {
    await api(`/api/alerts/${encodeURIComponent(alert.id)}/${verb}`, { method: "POST", body: JSON.stringify(body) });
    toast(`${alert.asset}: ${verb === "ack" ? "acknowledged" : verb + "d"}`);
  } catch (e) {
    toast(`Could not ${verb}: ${e.message}`, true);
  }
  btn.disabled = false;
  refresh();
}

// ---- assets and history ---------------------------------------------------------------

function assetRow(s) {
  const toggle = el("button", { type: "button", class: "quiet maint-btn", text: s.maintenance ? "End" : "Start" });
  toggle.addEventListener("click", async () => {
    if (!state.person) { toast("Sign in with your token first.", true); return; }
    try {
      await api(`/api/assets/${encodeURIComponent(s.asset)}/maintenance`, { method: "POST", body: JSON.stringify({ on: !s.maintenance }) });
    } catch (e) { toast(`Could not change maintenance: ${e.message}`, true); }
    refresh();
  });
  return el("tr", { class: `st-${s.state}` },
    el("td", { text: s.asset }),
    el("td", {}, el("span", { class: `badge state ${s.state}`, text: s.state === "normal" ? "normal" : `${s.state} · ${s.severity}` })),
    el("td", { text: fmtScore(s.last_score) }),
    el("td", { class: `fresh-${s.freshness.replace(" ", "-")}`, text: s.age_s === null ? s.freshness : `${s.freshness}, ${ago(s.last_seen)}` }),
    el("td", {}, el("span", { text: s.maintenance ? "in maintenance " : "" }), toggle));
}

function historyRow(a) {
  return el("tr", { "data-alert-id": a.id },
    el("td", { text: a.id }), el("td", { text: a.asset }),
    el("td", {}, el("span", { class: `badge ${a.severity}`, text: a.severity }),
       el("span", { class: "kind-label", text: ` ${KIND_LABEL[a.kind || "model"] || a.kind}` })),
    el("td", { text: a.state }), el("td", { text: fmtTime(a.opened_ts) }),
    el("td", { text: a.ack_by ? `${a.ack_by}${a.ack_note ? ": " + a.ack_note : ""}` : "—" }),
    el("td", { text: a.resolved_by ? `${a.resolved_by}${a.resolved_note ? ": " + a.resolved_note : ""}` : "—" }),
    el("td", { text: (a.top_signals || []).join(", ") || "—" }));
}

function historyQuery(offset) {
  const q = new URLSearchParams({ limit: HISTORY_PAGE, offset });
  const asset = $("f-asset").value.trim(), st = $("f-state").value, sev = $("f-severity").value, since = $("f-since").value;
  if (asset) q.set("asset", asset);
  if (st) q.set("state", st);
  if (sev) q.set("severity", sev);
  if (since) q.set("since", String(Math.floor(Date.now() / 1000 - Number(since))));
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

async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    const [open, assets] = await Promise.all([api("/api/alerts?state=unresolved&limit=200"), api("/api/assets")]);
    $("open-alerts").replaceChildren(...open.items.map(alertCard));
    $("no-open").hidden = open.items.length > 0;
    $("open-count").textContent = open.items.length ? `(${open.items.length})` : "";
    $("assets").tBodies[0].replaceChildren(...assets.items.map(assetRow));
    await loadHistory(false);
  } catch (e) {
    if (e.status === 401) toast("This agent needs a token to show alerts: sign in.", true);
    else toast(`Cannot reach the agent: ${e.message}`, true);
  } finally {
    state.refreshing = false;
    if (state.again) { state.again = false; refresh(); }
  }
}

// ---- live updates: server-sent events, with polling as the fallback ------------------------

function live() {
  const badge = $("live");
  let source = null;
  try { source = new EventSource("/api/events"); } catch (e) { source = null; }
  // Polling is the backstop: slow while the stream is up, fast once it is refused for good
  // (e.g. reads need a token, which EventSource cannot send).
  let timer = setInterval(refresh, source ? 30000 : 5000);
  if (source) {
    source.addEventListener("open", () => { badge.textContent = "live"; badge.className = "live ok"; });
    source.addEventListener("change", () => refresh());
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        clearInterval(timer);
        timer = setInterval(refresh, 5000);
        badge.textContent = "polling";
        badge.className = "live";
      } else {
        badge.textContent = "reconnecting…";
        badge.className = "live bad";
      }
    });
  }
}

async function start() {
  $("signin").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("token").value.trim()); $("token").value = ""; });
  $("signout").addEventListener("click", () => { state.token = ""; state.person = ""; sessionStorage.removeItem(TOKEN_KEY); showWho(); });
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadHistory(false).catch((e) => toast(e.message, true)); });
  $("more").addEventListener("click", () => loadHistory(true).catch((e) => toast(e.message, true)));
  try {
    const st = await api("/api/status");
    $("site").textContent = st.site;
    state.rules = st.rules || null;
  } catch (e) { /* refresh() reports */ }
  if (state.token) await signIn(state.token); else { showWho(); refresh(); }
  live();  // the periodic refresh also keeps the "… ago" times current
}

document.addEventListener("DOMContentLoaded", start);
