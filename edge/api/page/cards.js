// Forewarn crew page: the open-alert cards and the actions on them.
"use strict";

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
  // The device behind this alert is gone (Sparkplug death) or silent: say so first.
  const src = state.assets[a.asset];
  const gone = Boolean(src && (src.stale || src.freshness === "stale"));
  if (gone) {
    card.classList.add("gone");
    card.append(el("p", { class: "offline", text: Words.dataAge(src) }));
  }
  if (kind === "model") {
    const what = `${Words.score(m, a.score)}${Number.isFinite(a.peak_score) && Words.score(m, a.peak_score) !== Words.score(m, a.score) ? ` (${Words.peak(m, a.peak_score)})` : ""}`;
    const score = el("p", { class: "score", text: what });
    if (gone) score.append(el("span", { class: "outdated", text: " — out of date" }));
    card.append(score, since,
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
    // Resolving asks for the verdict first (verdict.js); the other actions go at once.
    b.addEventListener("click", () => (verb === "resolve" ? openVerdict(a, "resolve", note.value, b.dataset.focus)
      : act(a, verb, note.value, b)));
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

const DONE = { ack: "acknowledged", shelve: "shelved for 1 h", unshelve: "unshelved" };

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

// A press is keydown then keyup (Space) or pointerdown then click on one element: a card
// replaced in between swallowed it (a refresh lands at any moment). While a press on a
// card is held, the newest render waits and is made once the press has done its work.
const press = { held: false, pending: null };
function pressStart(e) {
  const box = $("open-alerts");
  if (box && box.contains(e.target) && (e.type === "pointerdown" || e.key === " " || e.key === "Enter")) press.held = true;
}
function pressEnd() {
  if (!press.held) return;
  press.held = false;
  const items = press.pending;
  press.pending = null;
  if (items) setTimeout(() => { if (!press.held) replaceCards(items); else press.pending = items; }, 0);
}
document.addEventListener("keydown", pressStart, true);
document.addEventListener("pointerdown", pressStart, true);
for (const t of ["keyup", "pointerup", "pointercancel"]) document.addEventListener(t, pressEnd, true);

// Re-rendering must not drop a half-typed note or the keyboard focus.
function replaceCards(items) {
  if (press.held) { press.pending = items; return; }
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

