"""The agent's footprint: importing the whole agent pulls in no training stack."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sklearn", "skl2onnx", "pandas", "torch", "trainer", "mlflow")


def test_agent_imports_no_training_stack() -> None:
    code = ("import sys, edge.app, edge.cli, edge.model_cli, edge.lifecycle\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
