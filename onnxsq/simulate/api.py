"""``simulate``: run a power-of-two QDQ model (or its export-int package) in integer arithmetic over a
data source, batch at a time, and report it against onnxruntime and the float model."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..errors import InvalidOptionError
from ..report import Report
from ..runtime import make_session
from .bounds import signed_bits, worst_accumulator
from .compare import Reference, output_steps, step_diff
from .execute import Simulator
from .program import KIND_ACTION, Program
from .rounding import ROUNDINGS

log = logging.getLogger(__name__)


@dataclass
class SimulateConfig:
    rounding: str = "half-even"
    acc_bits: int = 32
    compare: bool = True  # against onnxruntime (needs the ONNX model, not only a package)
    per_layer: bool = True  # also every layer alone (one onnxruntime session per layer: slow on big models)
    float_model: Any = None  # path or ModelProto of the float model, for the error against float

    def validate(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise InvalidOptionError(f"--rounding must be one of {', '.join(ROUNDINGS)}, not {self.rounding!r}")
        if not 8 <= self.acc_bits <= 64:
            raise InvalidOptionError(f"--acc-bits must be in 8..64, not {self.acc_bits}")


@dataclass
class _Tally:
    """Running per-layer and per-output differences over the batches."""

    layer: dict[str, list[int]] = field(default_factory=dict)  # name -> [max step, differing, elements]
    vs_half_even: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    float_err: dict[str, list[float]] = field(default_factory=dict)  # name -> [max abs, signal, noise]
    samples: int = 0
    batches: int = 0
    t_sim: float = 0.0  # over the batches after the first (the first builds caches and island sessions)
    t_ort: float = 0.0  # the same batches
    t_first: float = 0.0  # simulate's first batch
    t_sim_all: float = 0.0

    def add_layer(self, name: str, diff: tuple[int, int], size: int) -> None:
        row = self.layer.setdefault(name, [0, 0, 0])
        row[0], row[1], row[2] = max(row[0], diff[0]), row[1] + diff[1], row[2] + size

    def add_output(self, key: str, name: str, steps: np.ndarray) -> None:
        row = self.outputs.setdefault(f"{name}|{key}", {"worst": 0.0, "differ": 0, "elements": 0})
        row["worst"] = max(row["worst"], float(steps.max(initial=0)))
        row["differ"] += int(np.count_nonzero(steps))
        row["elements"] += int(steps.size)


def simulate(program: Program, source: Iterable[Mapping[str, np.ndarray]], *, model: onnx.ModelProto | None = None,
             config: SimulateConfig | None = None) -> tuple[dict[str, np.ndarray], Report]:
    """Simulate every batch of ``source``; returns the graph outputs (batches concatenated) and the
    report. ``model``: the QDQ model, for the comparison with onnxruntime (None: no comparison)."""
    cfg = config or SimulateConfig()
    cfg.validate()
    sim = Simulator(program, cfg.rounding, cfg.acc_bits)
    even = Simulator(program, "half-even", cfg.acc_bits) if cfg.rounding != "half-even" else None
    ref = Reference(model, program, per_layer=cfg.per_layer) if (cfg.compare and model is not None) else None
    flt = make_session(str(cfg.float_model) if not isinstance(cfg.float_model, onnx.ModelProto)
                       else cfg.float_model) if cfg.float_model is not None else None
    tally = _Tally()
    collected: dict[str, list[np.ndarray]] = {o: [] for o in program.outputs}
    for feed in source:
        feed = {k: np.asarray(v) for k, v in feed.items()}
        t0 = time.perf_counter()
        result = sim.run(feed)
        dt = time.perf_counter() - t0
        tally.t_sim_all += dt
        if tally.batches:
            tally.t_sim += dt
        else:
            tally.t_first = dt
        tally.batches += 1
        tally.samples += int(next(iter(feed.values())).shape[0]) if feed else 1
        for o in program.outputs:
            collected[o].append(result.outputs[o])
        if even is not None:
            _tally_rounding(program, even.run(feed), result, tally)
        if ref is not None:
            _tally_reference(program, ref, feed, result, tally)
        if flt is not None:
            _tally_float(program, flt, feed, result, tally)
    outputs = {o: np.concatenate(v) if v and np.ndim(v[0]) else (v[0] if v else np.zeros(0))
               for o, v in collected.items()}
    return outputs, _report(program, sim, tally, cfg, ref)


def _tally_rounding(program: Program, even, result, tally: _Tally) -> None:
    for name, q in result.ints.items():
        tally.vs_half_even[name] = tally.vs_half_even.get(name, 0) + int(np.count_nonzero(q != even.ints[name]))


def _tally_reference(program: Program, ref: Reference, feed, result, tally: _Tally) -> None:
    t0 = time.perf_counter()
    ref.default.run(None, feed)
    if tally.batches > 1:  # as simulate's time: the batches after the first
        tally.t_ort += time.perf_counter() - t0
    for key, outs in ref.run(feed).items():
        for o in program.outputs:
            tally.add_output(key, o, output_steps(program, o, result.outputs[o], outs[o]))
    if not ref.per_layer:
        return
    for layer in program.layers:
        theirs = ref.layer(layer, result.ints, feed)
        if theirs is None:
            continue
        if layer.out is None:
            mine = np.asarray(result.outputs.get(layer.output), dtype=np.float64)
            diff = (int(np.abs(mine - theirs).max(initial=0) > 0), int(np.count_nonzero(mine != theirs)))
            tally.add_layer(layer.name, diff, mine.size)
        else:
            tally.add_layer(layer.name, step_diff(result.ints[layer.output], theirs), result.ints[layer.output].size)


def _tally_float(program: Program, flt, feed, result, tally: _Tally) -> None:
    names = [o.name for o in flt.get_outputs()]
    values = dict(zip(names, flt.run(None, feed)))
    for o in program.outputs:
        if o not in values:
            continue
        ref = np.asarray(values[o], dtype=np.float64)
        mine = np.asarray(result.outputs[o], dtype=np.float64)
        if ref.shape != mine.shape:
            continue
        row = tally.float_err.setdefault(o, [0.0, 0.0, 0.0])
        row[0] = max(row[0], float(np.abs(mine - ref).max(initial=0)))
        row[1] += float(np.sum(ref ** 2))
        row[2] += float(np.sum((mine - ref) ** 2))


def _report(program: Program, sim: Simulator, tally: _Tally, cfg: SimulateConfig, ref: Reference | None) -> Report:
    rep = Report("simulate")
    action = KIND_ACTION
    worst_over, seen_over = [], []
    for layer in program.layers:
        st = sim.stats[layer.name]
        kind = "float island" if st.fallback else action[layer.kind]
        d: dict[str, Any] = {}
        if layer.out is not None:
            d.update(bits=layer.out.bits, signed=layer.out.signed, shift=layer.out.shift)
        d["steps"] = "→".join(s.op for s in layer.steps) or "-"
        if layer.name in tally.layer:
            d["max_step"], d["differ"], d["elements"] = tally.layer[layer.name]
        worst = worst_accumulator(program, layer)
        if worst is not None:
            d["acc_worst_bits"] = signed_bits(worst)
            d["acc_seen_bits"] = signed_bits(st.acc_max)
            flags = [f for f, hit in (("worst", d["acc_worst_bits"] > cfg.acc_bits),
                                      ("observed", st.acc_overflow > 0)) if hit]
            d["overflow"] = ",".join(flags)
            if "worst" in flags:
                worst_over.append(layer.name)
            if "observed" in flags:
                seen_over.append(layer.name)
        d["saturated"] = st.saturated
        if cfg.rounding != "half-even" and layer.output in tally.vs_half_even:
            d["vs_half_even"] = tally.vs_half_even[layer.output]
        rep.add(layer.name, layer.op, kind, st.fallback or layer.reason, **d)
    rep.summary.update(_summary(program, sim, tally, cfg, worst_over, seen_over))
    if ref is not None:
        rep.summary["reference"] = ref.kind
    if ref is not None and tally.outputs:
        for key, row in tally.outputs.items():
            if key.endswith("|ort") and row["worst"] > 1:
                rep.warnings.append(f"{key.split('|')[0]}: differs from onnxruntime by up to {row['worst']:g} steps")
    return rep


def _summary(program: Program, sim: Simulator, tally: _Tally, cfg: SimulateConfig, worst_over: list[str],
             seen_over: list[str]) -> dict[str, Any]:
    islands = [lay.name for lay in program.layers if lay.kind in ("float", "tail") or sim.stats[lay.name].fallback]
    s: dict[str, Any] = {
        "samples": tally.samples, "rounding": cfg.rounding, "acc_bits": cfg.acc_bits,
        "layers": len(program.layers),
        "integer_layers": sum(1 for lay in program.layers if lay.kind == "int" and not sim.stats[lay.name].fallback),
        "table_layers": sum(1 for lay in program.layers if lay.kind == "lut" and not sim.stats[lay.name].fallback),
        "float_islands": len(islands), "float_island_layers": islands,
        "acc_overflow_worst_case": worst_over, "acc_overflow_observed": seen_over,
    }
    for key, row in tally.outputs.items():
        name, which = key.split("|")
        s[f"{which}_equal_fraction:{name}"] = 1.0 - row["differ"] / max(row["elements"], 1)
        s[f"{which}_worst_step:{name}"] = row["worst"]
    for name, (mx, sig, noise) in tally.float_err.items():
        s[f"float_max_abs_error:{name}"] = mx
        s[f"float_sqnr_db:{name}"] = float(10 * np.log10(sig / noise)) if noise > 0 and sig > 0 else float("inf")
    if cfg.rounding != "half-even":
        changed = {k: v for k, v in tally.vs_half_even.items() if v}
        s["vs_half_even_layers"] = len(changed)
        s["vs_half_even_elements"] = int(sum(changed.values()))
    s["time_simulate_s"] = round(tally.t_sim_all, 4)
    s["time_first_batch_s"] = round(tally.t_first, 4)
    if tally.t_ort:  # warm: the batches after the first, on both sides
        s["time_simulate_warm_s"] = round(tally.t_sim, 4)
        s["time_onnxruntime_s"] = round(tally.t_ort, 4)
        s["time_ratio"] = round(tally.t_sim / tally.t_ort, 2)
    return s
