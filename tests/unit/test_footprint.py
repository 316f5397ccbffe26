"""The agent's footprint: importing the whole agent pulls in no training stack, and
``forewarn agent`` loads neither pyarrow (the compaction child does), protobuf
(only Sparkplug sites do) nor asyncua (only OPC UA sites do: ~16 MB); nor the ingest
workers' module (only with ``ingest.processes > 1``) nor tarfile (only an archive
install opens one)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sklearn", "skl2onnx", "pandas", "torch", "trainer", "mlflow")


def test_agent_imports_no_training_stack() -> None:
    code = ("import sys, edge.app, edge.cli, edge.cli.models, edge.models.lifecycle\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_forewarn_agent_command_loads_no_pyarrow_protobuf_or_asyncua() -> None:
    code = ("import sys\nfrom edge.cli import build_parser\n"
            "args = build_parser().parse_args(['agent', '--config', 'x.toml'])\n"
            "import edge.app\n"
            "print(','.join(m for m in ('pyarrow', 'google.protobuf', 'asyncua',\n"
            "                           'edge.ingest.workers', 'tarfile')\n"
            "               if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
