"""``forewarn retrain --if-needed``: is a retrain due, and which trigger says so?

* **drift**: the agent's drift alarm (``<state_dir>/drift-state.json``,
  :mod:`edge.drift.state`) has been on for the active model for at least
  ``retrain.drift_alarm_hours`` of data time;
* **precision**: the active model's live precision (the crew's last verdict on
  each resolved model alert: confirmed / (confirmed + false alarm), the
  computation of :mod:`edge.alerts.verdicts` and ``GET /api/precision``) is more
  than ``retrain.precision_drop_points`` below the bundle's own figure
  (``validation_figure`` of its manifest metrics), once at least
  ``retrain.min_verdicts`` alerts are judged;
* **age**: the active version was installed more than ``retrain.max_model_age_days``
  ago (off unless set).

Each check says why it did or did not fire; a check that cannot be made (no drift
state yet, a bundle without a precision figure) does not fire and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.alerts.verdicts import read_rows, summarise, validation_figure
from edge.drift.state import STATE_FILE, read_state
from edge.models.bundle import Manifest


@dataclass(frozen=True)
class Trigger:
    name: str
    fired: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'FIRED' if self.fired else 'no'} - {self.detail}"


def drift(state_dir: Path, model: str, hours: float) -> Trigger:
    path = Path(state_dir) / STATE_FILE
    st = read_state(path)
    if st is None:
        return Trigger("drift", False, f"{path} not written yet (drift off, or no interval "
                                       "closed since the agent started)")
    if st.model != model:
        return Trigger("drift", False, f"the drift state is of {st.model}, not of the active "
                                       f"{model} (no interval closed since the swap)")
    if not st.alarm:
        return Trigger("drift", False, f"no drift alarm in the last of {st.intervals} "
                                       "intervals")
    on_h = st.alarm_for_s / 3600.0
    fired = on_h >= hours
    return Trigger("drift", fired,
                   f"drift alarm on for {on_h:.2f} h of data ({st.alarm_intervals} intervals; "
                   f"{', '.join(st.over) or 'score'}), threshold {hours:g} h")


def precision(store_path: Path, manifest: Manifest, drop_points: float,
              min_verdicts: int) -> Trigger:
    ident = f"{manifest.name}/{manifest.version}"
    fig = validation_figure(manifest.metrics)
    if fig is None:
        return Trigger("precision", False, f"bundle {ident} records no precision figure "
                                           "(validation_precision, test_precision or "
                                           "test_window_precision)")
    key, val = fig
    if not Path(store_path).is_file():
        return Trigger("precision", False, f"{store_path} does not exist yet")
    tally = summarise(read_rows(Path(store_path))).by_model.get(ident)
    if tally is None or tally.judged < min_verdicts:
        n = 0 if tally is None else tally.judged
        return Trigger("precision", False, f"{n} judged alerts of {ident}, fewer than the "
                                           f"{min_verdicts} the comparison needs")
    live = tally.precision
    assert live is not None
    fired = live < val - drop_points / 100.0
    return Trigger("precision", fired,
                   f"live precision {live:.1%} ({tally.confirmed} confirmed, "
                   f"{tally.false_alarm} false alarms) against {key} {val:.1%}: "
                   f"{(val - live) * 100:+.1f} points below, threshold {drop_points:g}")


def age(installed: float, now: float, max_days: float | None) -> Trigger:
    if max_days is None:
        return Trigger("age", False, "retrain.max_model_age_days is not set")
    days = (now - installed) / 86_400.0
    return Trigger("age", days > max_days,
                   f"active version installed {days:.1f} days ago, threshold {max_days:g}")
