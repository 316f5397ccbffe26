"""Storage and drift's work per reading on the cost figure's stream, in instructions.

The cost figure (``bench.hotpath cost``: CPU seconds of a fresh agent draining the
single-JSON backlog, storage and drift off vs on) must stay within +8 %, but on the
shared 2-core VM its CPU times moved from +8.5 % to -8 % +- 9 % between rounds:
other work on the machine decides it, not the agent. Instructions retired do not
depend on the load. This module feeds the same stream (:func:`bench.ingest.single_json`:
500 assets x 4 signals x 60 one-second slots, one reading a message) to the same
agent (:func:`bench.ingest.agent_cfg`, the ingest bundle with feature and score
references so drift is monitored, ``bench.run._with_reference``) through
``Pipeline.process`` in this process, no broker, in the batches the pipeline
thread takes from a full inbox (up to 4096 messages, ``Pipeline._drain_once``).

Run one case under callgrind::

    valgrind --tool=callgrind --callgrind-out-file=cg.out \\
        .venv/bin/python -m bench.storage_instructions run both 120000 --bundle DIR

or all of them, the bundle made once and the counts divided (the figure of
bench/results/2026-12-03-storage-cpu.md)::

    nice -n 19 .venv/bin/python -m bench.storage_instructions count \\
        --n1 40000 --n2 120000 --cases off both

``count`` runs ``valgrind --tool=callgrind`` once per case and message count, with
``PYTHONHASHSEED=0``, and reports instructions per reading
``(I(N2) - I(N1)) / (N2 - N1)``: what the interpreter, the imports, the bundle's
load and the agent's construction cost is the same in both runs and cancels, as
does building the messages (all 120,000 are built in every run, the first N are
processed). N1 = 40,000 (20 slots) is past the windows' warm-up (16 slots), so the
difference is the steady state: 5,000 windows scored, drift fed, 80,000 readings
stored. ``--n1 0`` gives the whole stream instead, warm-up included, like the
cost figure's drain. The split by object file (interpreter, numpy, onnxruntime,
libc, ...) is the same difference taken per object, from callgrind's per-function
self cost (``split FILE [--functions]`` prints one file's). Where a case's extra
instructions go, per function, from the four files ``count --keep DIR`` leaves::

    .venv/bin/python -m bench.storage_instructions diff DIR/cg-off-40000.out \
        DIR/cg-off-120000.out DIR/cg-both-40000.out DIR/cg-both-120000.out

onnxruntime's count is not steady: the same scoring (same windows, same batches)
moved by up to ~1,100 Ir/reading between runs (its own code and its calls into libc,
most of it in the session's start-up, by the counts), so ``count`` also gives each
case without onnxruntime and the calls it makes (``ir_per_reading_ex_onnxruntime``,
``vs_off_pct_ex_onnxruntime``): two runs of ``off`` then agree within 0.2 %.

What counts, as in the agent: the history store's flushes are the agent's own
policy (``StoreFlushPolicy``: 50,000 buffered rows, ~1 s at the drain's 53 k
readings/s; its 1 s timer set out of reach, since under valgrind every batch
would be a second late), run by ``Pipeline.process`` on this thread, each with its
window-phase save and malloc_trim (every flush: the agent's trim waits 2 s, so it
skips about every other one natively), and a final forced flush
(``_flush_and_ack(force=True)``, as ``Pipeline.stop``) inside the counted work; the
durable log is not compacted during the drain (500,000 rows or 300 s) nor at
stop (``close(compact=False)``), nor is it here. Callgrind counts every thread,
but no other thread runs: the agent is built and not started (no MQTT, no
compactor tick, no supervisor), and ``gc.collect(); gc.freeze()`` is done as
``Agent.start`` does. Not counted, in either case: the MQTT receive path (socket,
packet parsing, the inbox), which the cost figure's off run also pays; so the
ratio here is on a smaller denominator and reads higher than the drain's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CASES: dict[str, dict[str, Any]] = {
    "off": {"storage": {"enabled": False}, "drift": {"enabled": False}},
    "storage": {"drift": {"enabled": False}},
    "drift": {"storage": {"enabled": False}},
    "both": {},
}
STREAM = 120_000  # single_json(): 500 assets x 4 signals x 60 slots
ROOT = Path(__file__).resolve().parents[1]


def make_bundle(work: Path) -> tuple[Path, Path]:
    """The cost figure's bundle (bench.hotpath.cost): ingest, with drift references."""
    from bench.hotpath import _bundles
    from bench.run import _with_reference

    return _with_reference(*_bundles(work)["ingest"], work / "m" / "keys" / "signing.key")


def messages() -> list[Any]:
    """The single-JSON stream's messages, in bench.ingest.single_json's order."""
    import orjson

    from bench.ingest import T0
    from edge.ingest.message import Message

    now = time.time()  # receipt time: the agent refuses readings far ahead of it
    return [Message(f"forewarn/site1/a{a}/s{s}",
                    orjson.dumps({"ts": T0 + t, "value": 10.0 + (a + s + t) % 7}), now, 0, 0)
            for t in range(60) for a in range(500) for s in range(4)]


def run(case: str, n: int, bundle: tuple[Path, Path], work: Path, batch: int) -> dict[str, Any]:
    """The first ``n`` messages through ``Pipeline.process``, flushed as the agent would."""
    from bench import ingest
    from edge.app import Agent

    over: dict[str, Any] = json.loads(json.dumps(CASES[case]))
    if case in ("storage", "both"):
        # Flush by rows only (50,000, the default): the 1 s timer would fire on every
        # batch under valgrind, ~50x slower than the agent it stands for.
        over["storage"] = {"flush_interval_s": 1e9}
    msgs = messages()
    a = Agent(ingest.agent_cfg(work / "agent", *bundle, 1, **over))
    a.trimmer.min_interval_s = 0.0  # a trim per flush, not per 2 s of valgrind's time
    gc.collect()
    gc.freeze()  # as Agent.start
    p = a.pipeline
    for i in range(0, n, batch):
        p.process(msgs[i:min(i + batch, n)])
    p._flush_and_ack(force=True)  # as Pipeline.stop: the last rows durable
    out = {"case": case, "messages": n, "readings":
           float(a.metrics.readings_received._value.get()), "windows": p.scored_total,
           "rows_written": a.parquet.rows_written if a.parquet else 0,
           "drift_intervals": float(a.metrics.drift_intervals._value.get())}
    if a.parquet is not None:
        a.parquet.close(compact=False)  # as Agent.stop
    a.alert_store.close()
    gc.unfreeze()
    return out


class _Names:
    """callgrind's name compression: ``(12) name`` defines id 12, a later ``(12)`` uses it."""

    _RE = re.compile(r"\((\d+)\)(?: (.*))?")

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def resolve(self, rest: str) -> str:
        m = self._RE.match(rest)
        if not m:
            return rest
        if m.group(2) is not None:
            self.names[m.group(1)] = m.group(2)
        return self.names.get(m.group(1), rest)


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """A callgrind output's lines that matter: ("cost", fields) for a cost line, and
    (kind, name) for ``ob=``, ``fn=``, ``cob=``, ``cfn=`` and ``calls=``."""
    with open(path) as fh:
        for line in fh:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                yield "cost", line.split()
                continue
            kind, eq, rest = line.partition("=")
            if eq and kind in ("ob", "fn", "cob", "cfn", "calls"):
                yield kind, rest.strip()


def split(path: Path, functions: bool = False) -> dict[str, int]:
    """Self cost (Ir) per object file (or ``object:function``) of one callgrind output,
    all threads."""
    names = {"ob": _Names(), "fn": _Names()}
    cost: dict[str, int] = defaultdict(int)
    ob = fn = "?"
    skip = False  # the cost line after calls= is the callee's inclusive cost

    def resolve(kind: str, rest: str) -> str:
        return names[kind].resolve(rest)

    key = "?"
    for kind, rest in _records(path):
        if kind == "cost":
            if skip:
                skip = False
            elif len(rest) >= 2:
                cost[key] += int(rest[1])
        elif kind == "ob":
            ob = resolve("ob", rest)
            key = f"{ob}:{fn}" if functions else ob
        elif kind == "fn":
            fn = resolve("fn", rest)
            key = f"{ob}:{fn}" if functions else ob
        elif kind == "cob":
            resolve("ob", rest)  # defines the name, does not switch
        elif kind == "cfn":
            resolve("fn", rest)
        elif kind == "calls":
            skip = True
    return dict(cost)


def called_from(path: Path, caller: str) -> int:
    """Instructions spent in calls from functions of objects named ``caller`` into other
    objects (inclusive): libc's memcpy and malloc on behalf of onnxruntime, say."""
    resolve = _Names().resolve

    total, ob, cob, pending = 0, "?", None, False
    for kind, rest in _records(path):
        if kind == "cost":
            if pending:
                pending = False
                callee = cob if cob is not None else ob
                if caller in ob and caller not in callee and len(rest) >= 2:
                    total += int(rest[1])
                cob = None
        elif kind == "ob":
            ob = resolve(rest)
        elif kind == "cob":
            cob = resolve(rest)
        elif kind == "calls":
            pending = True
    return total


def diff(n1_off: Path, n2_off: Path, n1_on: Path, n2_on: Path,
         functions: bool = True) -> dict[str, int]:
    """Per object (or function): (on(N2) - on(N1)) - (off(N2) - off(N1)), what the
    case adds over the N2 - N1 readings."""
    a, b, c, d = (split(p, functions) for p in (n1_off, n2_off, n1_on, n2_on))
    keys = set(a) | set(b) | set(c) | set(d)
    return {k: (d.get(k, 0) - c.get(k, 0)) - (b.get(k, 0) - a.get(k, 0)) for k in keys}


def group(obj: str) -> str:
    """A readable library name for an object file's path."""
    base = os.path.basename(obj)
    rules = [("libpython", "python (libpython)"), ("bin/python3", "python (binary)"),
             ("onnxruntime", "onnxruntime"), ("openblas", "openblas (numpy's BLAS)"),
             ("/numpy/", "numpy"), ("orjson", "orjson"),
             ("_sqlite3", "sqlite"), ("libsqlite", "sqlite"), ("arrow", "pyarrow"),
             ("parquet", "pyarrow"), ("zstd", "zstd"), ("snappy", "snappy"),
             ("libc.so", "libc"), ("libm.so", "libm"), ("ld-linux", "ld.so"),
             ("libstdc++", "libstdc++"), ("libgcc", "libgcc"), ("libz.so", "zlib"),
             ("_pydantic", "pydantic")]
    for key, label in rules:
        if key in (obj if "/" in key else base):
            return label
    if "lib-dynload" in obj:
        return "python stdlib C modules"
    return base or obj


def _callgrind(case: str, n: int, bundle: tuple[Path, Path], work: Path,
               batch: int) -> tuple[int, dict[str, int], dict[str, Any]]:
    """(total Ir, Ir per object, the run's counts); info["ort_calls"]: Ir that
    onnxruntime spent in other objects (memcpy, malloc, ...)."""
    out = work / f"cg-{case}-{n}.out"
    # OpenBLAS's idle threads spin for a while after a call, an amount that depends
    # on the wall time (-3,000 Ir/reading between two otherwise equal runs): one thread.
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           sys.executable, "-m", "bench.storage_instructions", "run", case, str(n),
           "--bundle", str(bundle[0]), "--pub", str(bundle[1]), "--batch", str(batch),
           "--work", str(work / f"w-{case}-{n}")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{case} {n} failed:\n{res.stderr[-3000:]}")
    info: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    info["ort_calls"] = called_from(out, "onnxruntime")
    objs = split(out)
    return sum(objs.values()), objs, info


def count(n1: int, n2: int, cases: list[str], batch: int, keep: Path | None,
          jobs: int = 1) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(prefix="forewarn-stinstr-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = make_bundle(work / "bundle")
        res: dict[str, Any] = {"n1": n1, "n2": n2, "batch": batch, "cases": {}}
        with ThreadPoolExecutor(jobs) as pool:  # counts do not depend on the load
            runs = {(case, n): pool.submit(_callgrind, case, n, bundle, work, batch)
                    for case in cases for n in (n1, n2)}
        for case in cases:
            row: dict[str, Any] = {}
            objs: dict[int, dict[str, int]] = {}
            for n in (n1, n2):
                total, by_obj, info = runs[case, n].result()
                row[f"I({n})"] = total
                row[f"run({n})"] = info
                objs[n] = by_obj
                print(case, n, total, info, flush=True)
            readings = row[f"run({n2})"]["readings"] - row[f"run({n1})"]["readings"]
            row["readings"] = readings
            row["ir_per_reading"] = (row[f"I({n2})"] - row[f"I({n1})"]) / readings
            per_group: dict[str, float] = defaultdict(float)
            for obj in set(objs[n1]) | set(objs[n2]):
                per_group[group(obj)] += (objs[n2].get(obj, 0) - objs[n1].get(obj, 0)) / readings
            row["by_library"] = dict(sorted(per_group.items(), key=lambda kv: -kv[1]))
            # The scoring is the same work in every case; onnxruntime's count of it is
            # not steady (module docstring), so the ratio is given without it too.
            # Its calls into libc (memcpy, malloc) move with it: taken out as well.
            ort_calls = (row[f"run({n2})"]["ort_calls"] - row[f"run({n1})"]["ort_calls"]) / readings
            row["ir_per_reading_ex_onnxruntime"] = (row["ir_per_reading"] - ort_calls
                                                    - per_group.get("onnxruntime", 0.0))
            res["cases"][case] = row
        base = res["cases"].get("off")
        if base:
            for row in res["cases"].values():
                row["vs_off_pct"] = 100 * (row["ir_per_reading"] / base["ir_per_reading"] - 1)
                row["vs_off_pct_ex_onnxruntime"] = 100 * (
                    row["ir_per_reading_ex_onnxruntime"]
                    / base["ir_per_reading_ex_onnxruntime"] - 1)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring for the method (python -m pydoc "
               "bench.storage_instructions).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one case, N messages (run this under valgrind)")
    r.add_argument("case", choices=list(CASES))
    r.add_argument("n", type=int, help=f"messages processed, 0..{STREAM}")
    r.add_argument("--bundle", type=Path, help="bundle dir (default: made here)")
    r.add_argument("--pub", type=Path, help="its public key (with --bundle)")
    r.add_argument("--batch", type=int, default=4096, help="messages per process() call")
    r.add_argument("--work", type=Path, help="state dir (default: a temporary one)")
    c = sub.add_parser("count", help="callgrind each case at N1 and N2, instructions/reading")
    c.add_argument("--n1", type=int, default=40_000)
    c.add_argument("--n2", type=int, default=STREAM)
    c.add_argument("--cases", nargs="+", choices=list(CASES), default=["off", "both"])
    c.add_argument("--batch", type=int, default=4096)
    c.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    c.add_argument("--jobs", type=int, default=1, help="valgrind runs at a time")
    c.add_argument("--json", type=Path, help="write the result here too")
    s = sub.add_parser("split", help="self instructions per object file of a callgrind file")
    s.add_argument("file", type=Path)
    s.add_argument("--functions", action="store_true", help="per object:function")
    d = sub.add_parser("diff", help="what a case adds per function: (ON2-ON1)-(OFF2-OFF1)")
    d.add_argument("files", type=Path, nargs=4, metavar=("OFF1", "OFF2", "ON1", "ON2"))
    d.add_argument("--top", type=int, default=40)
    d.add_argument("--readings", type=float, default=80_000, help="N2 - N1, to divide by")
    args = ap.parse_args(argv)
    if args.cmd == "split":
        objs = split(args.file, args.functions)
        for obj, ir in sorted(objs.items(), key=lambda kv: -kv[1]):
            print(f"{ir:>15,} {group(obj):<24} {obj}")
        return 0
    if args.cmd == "diff":
        rows = diff(*args.files)
        print(f"total {sum(rows.values()) / args.readings:,.1f} Ir/reading")
        for k, ir in sorted(rows.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
            obj, _, fn = k.partition(":")
            print(f"{ir / args.readings:>10,.1f} {group(obj):<22} {fn}")
        return 0
    if args.cmd == "count":
        res = count(args.n1, args.n2, args.cases, args.batch, args.keep, args.jobs)
        text = json.dumps(res, indent=1)
        if args.json:
            args.json.write_text(text + "\n")
        print(text)
        return 0
    if not 0 <= args.n <= STREAM:
        ap.error(f"n must be within 0..{STREAM}")
    with tempfile.TemporaryDirectory(prefix="forewarn-stinstr-") as tmp:
        work = args.work or Path(tmp)
        bundle = (args.bundle, args.pub) if args.bundle else make_bundle(work / "bundle")
        print(json.dumps(run(args.case, args.n, bundle, work, args.batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
