// Forewarn crew page: numbers and times in the crew's words (pure functions, no DOM).
// The model's meaning comes from GET /api/model: output kind (rul / anomaly / probability),
// unit, alert_when, the levels in force, the typical training score and each signal's
// unit and normal band.
"use strict";

const Words = (() => {
  const pad = (n) => String(n).padStart(2, "0");

  // "8,142", "47.5", "0.0231": precision by magnitude, thousands grouped.
  function num(x) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "—";
    const a = Math.abs(x);
    const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
    const opts = a > 0 && a < 1 ? { maximumSignificantDigits: 3 }
      : { minimumFractionDigits: 0, maximumFractionDigits: digits };
    return x.toLocaleString("en-US", opts);
  }

  // ---- times: absolute first, relative second, never in a tooltip ----------------

  function clock(ts) {
    const d = new Date(ts * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function shortClock(ts) {
    const d = new Date(ts * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }

  // "14:03:12", or "2 Dec 14:03:12" when not today (year too when not this year).
  function absolute(ts, now) {
    if (ts === null || ts === undefined) return "—";
    const d = new Date(ts * 1000), today = new Date((now || Date.now() / 1000) * 1000);
    if (sameDay(d, today)) return clock(ts);
    const opts = { day: "numeric", month: "short" };
    if (d.getFullYear() !== today.getFullYear()) opts.year = "numeric";
    return `${d.toLocaleDateString("en-GB", opts)} ${clock(ts)}`;
  }

  function ago(ts, now) {
    if (ts === null || ts === undefined) return "";
    const s = (now || Date.now() / 1000) - ts;
    if (s < -90) return "in the future (agent clock ahead)";
    const a = Math.max(0, s);
    if (a < 90) return `${Math.round(a)} s ago`;
    if (a < 5400) return `${Math.round(a / 60)} min ago`;
    if (a < 172800) return `${Math.round(a / 3600)} h ago`;
    return `${Math.round(a / 86400)} days ago`;
  }

  // "14:03:12 · 4 min ago"
  function when(ts, now) {
    if (ts === null || ts === undefined) return "—";
    return `${absolute(ts, now)} · ${ago(ts, now)}`;
  }

  function until(ts, now) {
    if (ts === null || ts === undefined) return "—";
    const s = ts - (now || Date.now() / 1000);
    const left = s < 5400 ? `${Math.max(0, Math.round(s / 60))} min left`
      : s < 172800 ? `${Math.round(s / 3600)} h left` : `${Math.round(s / 86400)} days left`;
    return `${absolute(ts, now)} · ${left}`;
  }

  // A length of time: "45 s", "6 min", "3 h", "2 days".
  function duration(s) {
    if (!Number.isFinite(s)) return "—";
    const a = Math.max(0, s);
    if (a < 90) return `${Math.round(a)} s`;
    if (a < 5400) return `${Math.round(a / 60)} min`;
    if (a < 172800) return `${Math.round(a / 3600)} h`;
    return `${Math.round(a / 86400)} days`;
  }

  // An /api/assets row's data, never "fresh" for a device that is gone:
  // "No data — device reported offline at 14:03:12 · 4 min ago" (Sparkplug death),
  // "No data for 6 min" (silent), "fresh, 14:03:12 · 5 s ago".
  function dataAge(row, now) {
    if (row.stale_reason === "source_died") {
      return row.dead_since ? `No data — device reported offline at ${when(row.dead_since, now)}` : "No data — device reported offline";
    }
    if (row.stale || row.freshness === "stale") return `No data for ${duration(row.age_s)}`;
    if (row.age_s === null || row.age_s === undefined) return "No data yet";
    return `${row.freshness}, ${when(row.last_seen, now)}`;
  }

  // ---- scores -----------------------------------------------------------------------

  function horizonText(h) {
    if (!h || !Number.isFinite(h.value)) return "";
    if (h.unit === "s") {
      const v = h.value;
      if (v >= 172800) return `${num(v / 86400)} days`;
      if (v >= 7200) return `${num(v / 3600)} hours`;
      if (v >= 120) return `${num(v / 60)} minutes`;
      return `${num(v)} s`;
    }
    return `${num(h.value)} ${h.unit}`;
  }

  // What one score says, e.g. "≈ 12 cycles left", "3.4× normal", "72 % chance of failure within 30 cycles".
  function score(model, x) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "—";
    if (!model) return `score ${num(x)}`;
    if (model.kind === "rul") {
      const unit = model.unit ? ` ${model.unit}` : "";
      return `≈ ${num(Math.max(0, Math.round(x)))}${unit} left`;
    }
    if (model.kind === "probability") {
      const h = horizonText(model.horizon);
      return `${Math.round(x * 100)} % chance of failure${h ? ` within ${h}` : ""}`;
    }
    return ratioText(model, x);
  }

  // Anomaly scores have no unit of their own: shown as a multiple of the typical score on
  // the training data ("normal" = 1.0×); without that reference, of the warning level.
  function ratio(model, x) {
    const ref = model.reference_score;
    if (Number.isFinite(ref) && ref > 0) return { value: x / ref, of: "normal" };
    const w = model.thresholds && model.thresholds.warning;
    if (Number.isFinite(w) && w > 0) return { value: x / w, of: "the warning level" };
    return null;
  }

  function ratioText(model, x) {
    const r = ratio(model, x);
    return r ? `${r.value.toFixed(1)}× ${r.of}` : `score ${num(x)}`;
  }

  // Short form of a level for the thresholds sentence: "30 cycles", "3.1×", "50 %".
  function level(model, x) {
    if (model.kind === "rul") return `${num(x)}${model.unit ? ` ${model.unit}` : ""}`;
    if (model.kind === "probability") return `${Math.round(x * 100)} %`;
    const r = ratio(model, x);
    return r ? `${r.value.toFixed(1)}× ${r.of}` : num(x);
  }

  // "warning below 30 cycles, critical below 15 cycles"
  function thresholds(model) {
    if (!model || !model.thresholds) return "";
    const dir = model.alert_when === "below" ? "below" : "above";
    const t = model.thresholds, parts = [];
    if (Number.isFinite(t.warning)) parts.push(`warning ${dir} ${level(model, t.warning)}`);
    if (Number.isFinite(t.critical)) parts.push(`critical ${dir} ${level(model, t.critical)}`);
    return parts.join(", ");
  }

  // The peak while open: "lowest" where lower is worse, "highest" where higher is.
  function peak(model, x) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "";
    const word = model && model.alert_when === "below" ? "lowest" : "highest";
    if (!model) return `${word} ${num(x)}`;
    if (model.kind === "rul") return `${word} ${num(Math.max(0, Math.round(x)))}${model.unit ? ` ${model.unit}` : ""}`;
    if (model.kind === "probability") return `${word} ${Math.round(x * 100)} %`;
    const r = ratio(model, x);
    return r ? `${word} ${r.value.toFixed(1)}×` : `${word} ${num(x)}`;
  }

  function legend(model) {
    if (!model) return "Scores are shown as the model outputs them (this agent did not describe its model).";
    const t = thresholds(model);
    const lead = {
      rul: `“≈ N ${model.unit || ""} left” is the model's estimate of remaining life; lower is worse.`,
      probability: `“N % chance of failure” is the model's estimated probability${model.horizon ? ` of a failure within ${horizonText(model.horizon)}` : ""}.`,
      anomaly: Number.isFinite(model.reference_score) && model.reference_score > 0
        ? "“N× normal” is how far the anomaly score is above its typical value on the training data (1.0× = typical)."
        : "“N× the warning level” compares the anomaly score with the level that raises a warning.",
    }[model.kind] || "";
    return `${lead.replace(/\s+/g, " ")} Alert levels: ${t || "none"}.`;
  }

  // ---- signals ----------------------------------------------------------------------

  function band(f) {
    const lo = f.normal_low, hi = f.normal_high, unit = f.unit ? ` ${f.unit}` : "";
    const word = f.band === "training range" ? "normal" : "accepted";
    if (Number.isFinite(lo) && Number.isFinite(hi)) return `${word} ${num(lo)}–${num(hi)}${unit}`;
    if (Number.isFinite(lo)) return `${word} above ${num(lo)}${unit}`;
    if (Number.isFinite(hi)) return `${word} below ${num(hi)}${unit}`;
    return "";
  }

  // "8,142 rpm", plus where it lies against the band ("above normal").
  function reading(f) {
    // Alerts raised before readings were recorded have no "reading" key at all.
    if (!("reading" in f)) return { text: "", side: "" };
    if (!Number.isFinite(f.reading)) return { text: "no reading", side: "" };
    const text = `${num(f.reading)}${f.unit ? ` ${f.unit}` : ""}`;
    let side = "";
    if (Number.isFinite(f.normal_high) && f.reading > f.normal_high) side = "above";
    if (Number.isFinite(f.normal_low) && f.reading < f.normal_low) side = "below";
    return { text, side };
  }

  function deviation(f) {
    if (!Number.isFinite(f.deviation)) return "";
    const d = f.deviation;
    return `${d > 0 ? "+" : "−"}${Math.abs(d).toFixed(1)} σ from training`;
  }

  const KIND_LABELS = { limit: "Reading outside trained range", sensor_fault: "Sensor fault", model: "" };

  // An asset's model under a template bundle (GET /api/assets' "commissioning"):
  // learning its own normal (no model alerts yet), learned, or refused with the reason.
  function commissioning(row) {
    const c = row.commissioning;
    if (!c) return row.model || "—";
    if (c.state === "ready" && c.verified === false) return `own normal learned, not verified: ${c.reason || "verification failed"}; tell false alarms apart when you resolve`;
    if (c.state === "ready") return "own normal learned";
    if (c.state === "insufficient_data") return `not enough data to learn its normal${c.reason ? ": " + c.reason : ""}`;
    const pct = Math.floor(100 * (c.progress || 0));
    return `learning its normal: ${pct} %, no model alerts yet${c.reason ? " (" + c.reason + ")" : ""}`;
  }

  function kindLabel(kind) {
    if (!kind) return "";
    return Object.prototype.hasOwnProperty.call(KIND_LABELS, kind) ? KIND_LABELS[kind] : String(kind).replace(/_/g, " ");
  }

  // The alert store's condition in words: "model score", "s4 outside trained range".
  function condition(c) {
    const [kind, signal] = String(c || "").split(":");
    if (!signal) return "model score";
    if (kind === "limit") return `${signal} outside trained range`;
    if (kind === "sensor_fault") return `${signal} sensor fault`;
    return `${signal} ${kind.replace(/_/g, " ")}`;
  }

  return { num, absolute, ago, when, until, duration, dataAge, condition, shortClock, clock, score, peak, thresholds, legend,
           band, reading, deviation, kindLabel, ratio, commissioning };
})();
