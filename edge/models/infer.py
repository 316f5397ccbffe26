"""onnxruntime sessions: batched scoring of ready windows, warm-up and self-test.

A template bundle (``kind = "template"``, :mod:`edge.models.template`) scores with
per-asset parameters: :class:`TemplateScorer` feeds each window its asset's set and
hands the windows of assets without one (still commissioning) to a callback
instead of scoring them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import repeat
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from edge.core.errors import BundleError
from edge.models.bundle import Bundle, Manifest
from edge.models.template import INDEX_INPUT, probe_params, stack_feeds
from edge.scoring.window import ReadyWindow

Params = Mapping[str, np.ndarray]


class ScoredWindow(NamedTuple):
    """One scored window of one asset, as handed to alerts, drift and the API.

    A named tuple: the scorer builds one per window, and a frozen dataclass costs
    about three times as much to construct.
    """

    asset: str
    ts: float  # timestamp of the window's last slot (epoch s)
    score: float
    deviations: np.ndarray | None  # [features] in reference std units, if the graph has them
    model: str  # "<name>/<version>"
    # The raw window [signals, window] it was scored from (a reference, not a copy):
    # an alert shows the driving signal's reading from it.
    window: np.ndarray | None = None


class Scorer:
    """One onnxruntime session for one bundle: checked against its manifest, warmed up.

    Construction fails with BundleError when the graph's input/outputs do not
    match the manifest or when the manifest's self-test windows do not give
    their expected outputs: such a bundle never scores.
    """

    def __init__(self, bundle: Bundle, *, intra_op_threads: int = 1) -> None:
        self.bundle = bundle
        m = bundle.manifest
        self.ident = bundle.ident
        opts = ort.SessionOptions()
        # Spinning intra-op threads burn ~120 % CPU at 1k msg/s for a 0.2 ms p99 gain.
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                bundle.model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{bundle.path}/model.onnx: onnxruntime cannot load it ({exc})") \
                from exc
        self._check_io(m)
        self.outputs = [m.output.score_output]
        if m.output.deviations_output:
            self.outputs.append(m.output.deviations_output)
        self.input_name = m.input_name
        self.shape = (len(m.signals), m.window)
        # The public InferenceSession.run re-validates input names, OrtValue ownership
        # and graph-capture options on every call (~8 us, a third of a batch-1 run);
        # _check_io has validated the names once and only the CPU provider is used, so
        # the hot path calls the bound C++ session directly when it is there.
        self._run = getattr(self.session, "_sess", self.session).run
        self._self_test(m)

    def _check_io(self, m: Manifest) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        where = f"{self.bundle.path}/model.onnx"
        if m.commissioning is not None:
            self._check_template_io(m, inputs, where)
        elif m.input_name not in inputs or len(inputs) != 1:
            raise BundleError(f"{where}: expected one input {m.input_name!r}, graph has "
                              f"{sorted(inputs)}")
        shape = inputs[m.input_name].shape
        want = [len(m.signals), m.window]
        if len(shape) != 3 or [d for d in shape[1:]] != want:
            raise BundleError(f"{where}: input shape {shape} does not match manifest "
                              f"[batch, {want[0]}, {want[1]}] (signals, window)")
        if inputs[m.input_name].type != "tensor(float)":
            raise BundleError(f"{where}: input type {inputs[m.input_name].type}, want float32")
        outs = {o.name for o in self.session.get_outputs()}
        for name in (m.output.score_output, m.output.deviations_output):
            if name and name not in outs:
                raise BundleError(f"{where}: output {name!r} named in the manifest is missing "
                                  f"(graph outputs {sorted(outs)})")

    def _check_template_io(self, m: Manifest, inputs: dict[str, ort.NodeArg],
                           where: str) -> None:
        assert m.commissioning is not None
        want = {m.input_name: "tensor(float)", INDEX_INPUT: "tensor(int64)",
                **{p.input_name: f"tensor({'double' if p.dtype == 'float64' else 'float'})"
                   for p in m.commissioning.params}}
        if set(inputs) != set(want):
            raise BundleError(f"{where}: template inputs {sorted(inputs)} differ from the "
                              f"manifest's {sorted(want)}")
        for name, typ in want.items():
            if inputs[name].type != typ:
                raise BundleError(f"{where}: input {name!r} is {inputs[name].type}, the "
                                  f"manifest wants {typ}")
        for p in m.commissioning.params:
            if [d for d in inputs[p.input_name].shape[1:]] != p.shape:
                raise BundleError(f"{where}: input {p.input_name!r} has shape "
                                  f"{inputs[p.input_name].shape}, the manifest wants "
                                  f"[sets, {', '.join(map(str, p.shape))}]")

    def feeds(self, sets: list[Params], index: np.ndarray) -> dict[str, np.ndarray]:
        """A template's extra inputs: the parameter sets and each row's set."""
        spec = self.bundle.manifest.commissioning
        if spec is None:
            return {}
        return {INDEX_INPUT: index.astype(np.int64), **stack_feeds(sets, spec.params)}

    def probe_feeds(self, n: int) -> dict[str, np.ndarray]:
        """The self-test parameter set for ``n`` rows (full bundles: none)."""
        spec = self.bundle.manifest.commissioning
        if spec is None:
            return {}
        return self.feeds([probe_params(spec.params)], np.zeros(n, dtype=np.int64))

    def _self_test(self, m: Manifest) -> None:
        if not m.self_test:
            # Warm up anyway so the first real window does not pay for lazy init.
            self.run(np.zeros((1, *self.shape), dtype=np.float32), self.probe_feeds(1))
            return
        x = np.asarray([c.window for c in m.self_test], dtype=np.float32)
        if x.shape[1:] != self.shape:
            raise BundleError(f"{self.bundle.path}/manifest.json: self_test windows have shape "
                              f"{list(x.shape[1:])}, want {list(self.shape)}")
        scores, _ = self.run(x, self.probe_feeds(len(x)))
        for i, (case, got) in enumerate(zip(m.self_test, scores.tolist(), strict=True)):
            if not abs(got - case.expected) <= case.tolerance * max(1.0, abs(case.expected)):
                raise BundleError(
                    f"{self.bundle.path}: self-test case {i} gave {got:.6g}, manifest expects "
                    f"{case.expected:.6g} (±{case.tolerance})")

    def run(self, x: np.ndarray, feeds: Mapping[str, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores ``[batch]`` and deviations ``[batch, features]`` (or None).

        ``feeds``: a template's parameter inputs (:meth:`feeds`).
        """
        res = self._run(self.outputs, {self.input_name: x, **(feeds or {})}, None)
        scores = res[0].astype(np.float64).reshape(len(x))
        return scores, (res[1] if len(res) > 1 else None)

    def score(self, windows: list[ReadyWindow], batch_max: int = 512) -> list[ScoredWindow]:
        out: list[ScoredWindow] = []
        # Locals, and tuples built by ScoredWindow._make (tuple.__new__ in C) from
        # columns: the per-window Python work is most of the overhead over
        # onnxruntime's own run (bench.run "scoring").
        make, ident, shape = ScoredWindow._make, self.ident, self.shape
        run, outputs, name = self._run, self.outputs, self.input_name
        append = out.append
        for lo in range(0, len(windows), batch_max):
            if batch_max == 1 or lo + 1 == len(windows):
                # One window (the alert path at low rates, or batch 1): a view with the
                # batch axis and one tuple, without the slices, zips and maps below.
                w = windows[lo]
                res = run(outputs, {name: w.values[None]}, None)
                append(make((w.asset, w.end_ts, res[0].item(),
                             res[1][0] if len(res) > 1 else None, ident, w.values)))
                continue
            chunk = windows[lo:lo + batch_max]
            # Several: concatenate + reshape is 2.5-5x cheaper than np.stack, which
            # wraps every array on its own.
            x = np.concatenate([w.values for w in chunk]).reshape(len(chunk), *shape)
            res = run(outputs, {name: x}, None)
            # float32 scores become Python floats exactly (tolist), as float64 did.
            rows = list(res[1]) if len(res) > 1 else repeat(None)
            out.extend(map(make, zip([w.asset for w in chunk], [w.end_ts for w in chunk],
                                     res[0].reshape(-1).tolist(), rows, repeat(ident),
                                     [w.values for w in chunk])))
        return out


class TemplateScorer(Scorer):
    """A template bundle's session: each window scored with its asset's parameters.

    ``params`` maps asset -> parameter set; it is replaced whole (:meth:`set_params`,
    one reference assignment), never mutated, so the hot loop reads a consistent
    mapping without a lock. Windows of other assets go to ``on_unscored``.
    """

    def __init__(self, bundle: Bundle, *, intra_op_threads: int = 1,
                 on_unscored: Callable[[list[ReadyWindow]], object] | None = None) -> None:
        if bundle.manifest.commissioning is None:
            raise BundleError(f"{bundle.path}: not a template bundle (kind "
                              f"{bundle.manifest.kind!r})")
        super().__init__(bundle, intra_op_threads=intra_op_threads)
        self.params: Mapping[str, Params] = {}
        self.on_unscored = on_unscored

    def set_params(self, params: Mapping[str, Params]) -> None:
        self.params = dict(params)

    def score(self, windows: list[ReadyWindow], batch_max: int = 512) -> list[ScoredWindow]:
        params = self.params
        ready = [w for w in windows if w.asset in params]
        if len(ready) != len(windows) and self.on_unscored is not None:
            self.on_unscored([w for w in windows if w.asset not in params])
        out: list[ScoredWindow] = []
        make, ident, shape = ScoredWindow._make, self.ident, self.shape
        for lo in range(0, len(ready), batch_max):
            chunk = ready[lo:lo + batch_max]
            pos: dict[str, int] = {}
            index = np.fromiter((pos.setdefault(w.asset, len(pos)) for w in chunk),
                                np.int64, len(chunk))
            x = np.concatenate([w.values for w in chunk]).reshape(len(chunk), *shape)
            scores, devs = self.run(x, self.feeds([params[a] for a in pos], index))
            rows = list(devs) if devs is not None else repeat(None)
            out.extend(map(make, zip([w.asset for w in chunk], [w.end_ts for w in chunk],
                                     scores.tolist(), rows, repeat(ident),
                                     [w.values for w in chunk])))
        return out


def scorer_for(bundle: Bundle, *, intra_op_threads: int = 1) -> Scorer:
    """The session a bundle needs: a :class:`TemplateScorer` for templates."""
    if bundle.manifest.commissioning is not None:
        return TemplateScorer(bundle, intra_op_threads=intra_op_threads)
    return Scorer(bundle, intra_op_threads=intra_op_threads)
