// Forewarn crew page: the asset table and the alert history.
"use strict";

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
  // A dead or silent device's last score is history, not its condition now.
  const gone = s.stale || s.freshness === "stale";
  const score = el("td", { class: "score-cell", text: Words.score(state.model, s.last_score) });
  if (gone && Number.isFinite(s.last_score)) score.append(el("span", { class: "outdated", text: " (out of date)" }));
  return el("tr", { class: `st-${s.state}${gone ? " gone" : ""}`, "data-asset": s.asset },
    el("td", { text: s.asset }),
    el("td", {}, el("span", { class: `badge state ${s.state}`, text: s.state === "normal" ? "normal" : `${s.state} · ${s.severity}` })),
    score,
    el("td", { class: `model-cell${s.commissioning ? " cm-" + s.commissioning.state + (s.commissioning.verified === false ? " cm-unverified" : "") : ""}`, text: Words.commissioning(s) }),
    el("td", { class: `data-age fresh-${gone ? "stale" : s.freshness.replace(" ", "-")}`, text: Words.dataAge(s) }),
    el("td", { class: "precision-cell", text: precisionShort(state.precision.assets[s.asset]) }),
    el("td", {}, el("span", { text: s.maintenance ? "in maintenance " : "" }), toggle));
}

function who(name, ts, note) {
  return name ? `${name}, ${Words.when(ts)}${note ? ": " + note : ""}` : "—";
}

// The verdict of a resolved alert, and the button to give or change it (verdict.js).
function verdictCell(a) {
  const cell = el("td", { class: "verdict-cell" }, el("span", { class: `verdict-text ${a.verdict || "none"}`, text: verdictText(a) }));
  if (a.state === "resolved" && state.session) {
    const label = a.verdict ? "Change" : "Give verdict";
    const b = el("button", { type: "button", class: "quiet verdict-change", text: label, "data-focus": `${a.id}:verdict`,
                             "aria-label": `${label}: alert #${a.id} ${a.asset}` });
    b.addEventListener("click", () => openVerdict(a, "verdict", "", b.dataset.focus));
    cell.append(" ", b);
  }
  return cell;
}

function historyRow(a) {
  return el("tr", { "data-alert-id": a.id },
    el("td", { text: a.id }), el("td", { text: a.asset }),
    el("td", {}, el("span", { class: `badge ${a.severity}`, text: a.severity }),
       el("span", { class: "kind-label", text: Words.kindLabel(kindOf(a)) ? ` ${Words.kindLabel(kindOf(a))}` : "" })),
    el("td", { text: a.state }), el("td", { text: Words.when(a.opened_ts) }),
    el("td", { text: who(a.ack_by, a.ack_ts, a.ack_note) }),
    el("td", { text: who(a.resolved_by, a.resolved_ts, a.resolved_note) }),
    verdictCell(a),
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
  // A re-render must not drop the keyboard focus (e.g. on "Change" after a verdict).
  const active = document.activeElement;
  const keep = active && body.contains(active) ? active.dataset.focus : "";
  if (append) body.append(...rows); else body.replaceChildren(...rows);
  const again = keep && body.querySelector(`[data-focus="${keep}"]`);
  if (again) again.focus();
  state.historyOffset = offset + page.items.length;
  $("h-count").textContent = `${state.historyOffset} of ${page.total}`;
  $("more").hidden = state.historyOffset >= page.total;
}

