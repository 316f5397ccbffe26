"""Write the tiny synthetic plant table of docs/train-your-own-data.md.

Two pumps, one reading a second of three signals (bearing temperature, flow,
vibration) that move together as a healthy pump's do. At the end of pump-2's
run its vibration decouples from the flow for two minutes: those rows carry
``fault = 1``. Deterministic (seeded), so the committed CSV is what this writes.

    python -m trainer.examples.make_plant_table trainer/examples/plant.csv
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC).timestamp()
ROWS = 1200  # per pump: 20 minutes at 1 Hz
FAULT_ROWS = 120


def rows(seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    out = ["timestamp;asset;bearing_temp_C;flow_l_min;vibration_mm_s;fault"]
    for pump in ("pump-1", "pump-2"):
        load = np.cumsum(rng.normal(0, 0.02, ROWS)).clip(-1.5, 1.5)
        flow = 120 + 8 * load + rng.normal(0, 0.4, ROWS)
        temp = 45 + 2 * load + rng.normal(0, 0.1, ROWS)
        vib = 2.0 + 0.05 * (flow - 120) + rng.normal(0, 0.03, ROWS)
        fault = np.zeros(ROWS, dtype=int)
        if pump == "pump-2":
            fault[-FAULT_ROWS:] = 1
            vib[-FAULT_ROWS:] += np.linspace(0.5, 2.5, FAULT_ROWS)
        for i in range(ROWS):
            t = datetime.fromtimestamp(START + i, UTC).strftime("%d.%m.%Y %H:%M:%S")
            # Decimal commas and ';' as a spreadsheet in many plants writes them.
            cells = [f"{temp[i]:.2f}", f"{flow[i]:.2f}", f"{vib[i]:.3f}"]
            out.append(";".join([t, pump, *(c.replace(".", ",") for c in cells),
                                 str(fault[i])]))
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).with_name("plant.csv")
    out.write_text("\n".join(rows()) + "\n")
    print(f"{out}: {len(rows()) - 1} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
