// Forewarn crew page: the "Alarm load" panel, GET /api/alarm-kpis in a shift supervisor's
// words: each figure against its EEMUA 191 / ISA-18.2 target, then what makes up the
// floods, chattering and stale alarms, by asset. And "Were the alerts right?": live
// precision from the crew's verdicts (GET /api/precision) per model beside the figure the
// model was validated with, and per asset in the asset table.
"use strict";

const MAX_NAMED = 5;  // assets named per flood; the rest are counted

// A rate to one decimal: "0.1", "1.4", "16" (a supervisor reads it against "about 1").
const rate = (x) => (Number.isFinite(x) ? (Math.round(x * 10) / 10).toLocaleString("en-US") : "—");

// [figure, now, target, within target?]
function kpiRows(k) {
  const ops = k.operators > 1 ? ` per operator` : "";
  const floodText = k.floods === 0 ? "none"
    : `${k.floods} (${Words.duration(k.flood_s)} in flood, ${Words.num(k.flood_fraction * 100)} % of the time)`;
  return [
    [`Alarms per 10 minutes, average${ops}`, rate(k.per_10min_avg), `about ${Words.num(k.target_per_10min)}`,
      k.per_10min_avg <= k.target_per_10min],
    [`Busiest 10 minutes${ops}`, `${rate(k.per_10min_peak)} alarms`, "10 or fewer", k.per_10min_peak <= 10],
    [`Alarms in the last 24 hours${ops}`, rate(k.per_day), `at most ${Words.num(k.target_per_day)}`,
      k.per_day <= k.target_per_day],
    ["Alarm floods (more than 10 in 10 minutes)", floodText, "none", k.floods === 0],
    ["Chattering alarms (3 or more changes in a minute)", Words.num(k.chattering), "none", k.chattering === 0],
    ["Stale alarms (open more than 24 hours)", Words.num(k.stale), "none", k.stale === 0],
  ];
}

function kpiItems(k) {
  const items = [];
  for (const f of k.flood_items || []) {
    const named = f.assets.slice(0, MAX_NAMED).map((a) => (a.alarms > 1 ? `${a.asset} ×${a.alarms}` : a.asset));
    const more = f.assets.length - named.length;
    items.push(["flood", `Flood ${Words.absolute(f.start)}–${Words.shortClock(f.end)}, ${f.alarms} alarms: ` +
      `${named.join(", ")}${more > 0 ? ` and ${more} more` : ""}`]);
  }
  for (const c of k.chattering_items || []) {
    items.push(["chattering", `Chattering: ${c.asset} — ${Words.condition(c.condition)}, ${c.transitions} changes in the last ${Words.num(k.window_h)} h`]);
  }
  for (const s of k.stale_items || []) {
    items.push(["stale", `Stale: ${s.asset} — open since ${Words.when(s.opened_ts)} (alert #${s.id})`]);
  }
  return items;
}

async function loadAlarmLoad() {
  const box = $("alarm-load"), msg = $("alarm-load-msg");
  let k;
  try { k = await api("/api/alarm-kpis"); } catch (e) {
    if (e.status === 401) throw e;  // the session ended: refresh() says so
    msg.textContent = `Alarm figures not available: ${e.message}`;
    return;  // the last figures stay, under that message
  }
  msg.textContent = `Last ${Words.num(k.window_h)} hours${k.operators > 1 ? `, ${k.operators} operators` : ""}.`;
  box.tBodies[0].replaceChildren(...kpiRows(k).map(([what, value, target, ok]) =>
    el("tr", { class: ok ? "kpi-ok" : "kpi-over" },
      el("td", { text: what }), el("td", { class: "kpi-now", text: value }),
      el("td", { text: target }), el("td", { class: "kpi-verdict", text: ok ? "OK" : "Above target" }))));
  $("alarm-items").replaceChildren(...kpiItems(k).map(([kind, text]) => el("li", { class: `kpi-item ${kind}`, text })));
}

// ---- live precision ---------------------------------------------------------------------

const pct = (x) => `${Math.round(x * 100)} %`;
const VALIDATED_ON = { validation_precision: "validation data", test_precision: "test data",
                       test_window_precision: "test data, per window" };

// "67 % right — 2 of 3 (1 could not tell)"; "no verdicts yet"
function precisionLong(t) {
  if (!t || !t.confirmed && !t.false_alarm && !t.unsure) return "no verdicts yet";
  const unsure = t.unsure ? ` (${t.unsure} could not tell)` : "";
  if (!t.judged) return `not known yet${unsure}`;
  return `${pct(t.precision)} right — ${t.confirmed} of ${t.judged}${unsure}`;
}

// the asset table's cell: "67 % (2 of 3)", or "—"
function precisionShort(t) {
  if (!t || !t.judged) return t && t.unsure ? `— (${t.unsure} could not tell)` : "—";
  return `${pct(t.precision)} (${t.confirmed} of ${t.judged})`;
}

function validatedText(v) {
  return v ? `${pct(v.precision)} (${VALIDATED_ON[v.metric] || v.metric})` : "—";
}

async function loadPrecision() {
  let p;
  try { p = await api("/api/precision"); } catch (e) {
    if (e.status === 401) throw e;
    $("precision-msg").textContent = `Precision not available: ${e.message}`;
    return;  // the last figures stay, under that message
  }
  state.precision = { assets: Object.fromEntries(p.assets.map((a) => [a.asset, a])) };
  const lines = [`All models: ${precisionLong(p.overall)}.`];
  if (p.unjudged) lines.push(`${p.unjudged} resolved alert${p.unjudged > 1 ? "s have" : " has"} no verdict yet (History: "Give verdict").`);
  for (const r of p.rules) lines.push(`${Words.kindLabel(r.kind) || r.kind} alerts: ${precisionLong(r)}.`);
  $("precision-msg").textContent = lines.join(" ");
  $("precision").tBodies[0].replaceChildren(...p.models.map((m) =>
    el("tr", { "data-model": m.model },
      el("td", { text: `${m.name} v${m.version}${m.active ? " (scoring now)" : ""}` }),
      el("td", { class: "kpi-now", text: precisionLong(m) }),
      el("td", { class: "validated", text: validatedText(m.validation) }))));
}
