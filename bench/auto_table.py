"""Derive `impl="auto"`'s per-architecture backend table from a bench results file.

  python -m bench.auto_table RESULTS.json [--write] [--table progan_fast/ops/auto_backends.json]

For each op (the fused ops; for `eq_conv2d` each conv-layer kind of the bench on its own: to_rgb,
g_conv, d_down, ...) the rule compares the forward+backward cases of each runtime backend (triton,
cuda) with the eager reference measured in the same run:

- cost = sum of median_ms / batch over a set of cases: time per training image, because every
  resolution of PGGAN's schedule trains on the same number of images;
- size threshold: the cases are ordered by the element count of their main input (numel). For each
  measured numel N, smallest first, the backend is tried on the cases with numel >= N: it qualifies
  there if it was measured at each of them, is never more than `--tolerance` (5 %) slower than the
  reference at any one, and costs at least `--margin` (5 %) less in total. The smallest N that
  qualifies is the threshold (none: the backend is left out). Fused kernels win where the device
  does the work and lose on small tensors, where a launch costs more host time than the reference's
  aten calls; one threshold per op captures that. A backend that qualifies from the smallest size
  on gets a plain entry ("triton"), as before; otherwise a conditional one
  ({"backend": "triton", "min_numel": N}, plus "layer" for eq_conv2d);
- the preference list is a step function of size: at each measured size the cheapest backend whose
  threshold admits it (largest threshold first, so a call takes the choice of the largest measured
  size it reaches), then, for
  eq_conv2d, a "ref" entry per measured layer kind (that kind's decision is the layer bench's, not
  the epilogue op's), then "ref" (always the last fallback). Nothing qualifies: ["ref"]. Note that a
  threshold covers every size from N on, measured or not: with the paper schedule many resolutions
  share one element count (G's 3x3 convs see 33.5M elements from 32 to 512 px), so a quick run
  that measures 8 and 128 px decides for 32-512 px from the 128-px case.

The resampling form of G's up-convs and D's down-convs follows the same rule: where the official
fused form (fused_scale: one 4x4 (transposed) stride-2 conv, 44 % of the FLOPs; the same function),
run on the backend the list above picks for it, is never more than 5 % slower than nearest-up + 3x3
/ 3x3 + avg-pool on the backend picked for that, and at least 5 % cheaper in total, from some input
size on (the smallest measured one where that holds for it and every larger one), "forms" says so,
with that size, and `auto` runs those layers in the fused form from there on.

The same rule on the CUDA-graph cases (mode fwdbwd_graph: device time without host dispatch) gives
a second list per op, "graph_ops", which `auto` follows inside a captured training step
(`ops.graph_mode()`, entered by TrainStep's --cuda-graph path), where host dispatch costs nothing.

Without --write it prints the table; with it, it replaces the entry of the results' GPU
architecture (sm_XY from env.device_capability) in the table file, recording the source file,
device, versions, date and rule, and leaves other architectures alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

from progan_fast.ops import _backend

from .report import LAYER_ALIASES, load_results

RUNTIME_BACKENDS = ("cuda", "triton", "igemm")  # igemm: layer cases only (eq_conv2d)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_PATH = os.path.join(REPO, "progan_fast", "ops", "auto_backends.json")


def _arch(env: dict) -> str:
    cap = env.get("device_capability")
    if not cap:
        raise ValueError("results have no env.device_capability (not a GPU run?)")
    major, minor = str(cap).split(".")[:2]
    return f"sm_{major}{minor}"




def _numel(case: dict) -> int | None:
    """Elements of the case's main input: the first op input, or the conv layer's x."""
    shape = case.get("x_shape")
    if shape is None and isinstance(case.get("shape"), dict) and case["shape"]:
        shape = next(iter(case["shape"].values()))
    return math.prod(int(d) for d in shape) if shape else None


def _group_cases(results: dict, mode: str) -> dict:
    """{(op, layer): {backend: {(layer name, res): (numel, per-image ms)}}} of the `mode` op/layer cases."""
    groups: dict = defaultdict(lambda: defaultdict(dict))
    for c in results.get("cases", []):
        if c.get("kind") not in ("op", "layer") or c.get("mode") != mode or not c.get("median_ms"):
            continue
        backend = c.get("backend")
        if backend not in ("ref",) + RUNTIME_BACKENDS:
            continue
        layer = c.get("layer")
        kind = LAYER_ALIASES.get(layer, layer) if c["op"] == "eq_conv2d" else None
        per_image_ms = c["median_ms"] / max(1, c.get("batch") or 1)
        groups[(c["op"], kind)][backend][(layer, c.get("res"))] = (_numel(c), per_image_ms)
    return groups


def _judge(base: dict, new: dict, tolerance: float, margin: float):
    """The one rule: `new` qualifies against `base` (per-image ms by the same keys) if it is never more
    than `tolerance` slower at any key and at least `margin` cheaper in total. Returns None where it
    qualifies, else ("slower", ratio, key) or ("margin", speedup overall); with the speedup."""
    worst = max(base, key=lambda k: new[k] / base[k])
    speedup = sum(base.values()) / sum(new[k] for k in base)
    if new[worst] / base[worst] > 1.0 + tolerance:
        return ("slower", new[worst] / base[worst], worst), speedup
    if speedup < 1.0 / (1.0 - margin):
        return ("margin", speedup), speedup
    return None, speedup


def _threshold(ref: dict, cases: dict, tolerance: float, margin: float):
    """(min_numel, note) for the smallest qualifying size threshold, or (None, why not)."""
    if set(ref) - set(cases):
        return None, "not measured at every reference case"
    everywhere = None  # why the backend does not qualify at every size
    for size in sorted({n or 0 for n, _ in ref.values()}):
        keys = [k for k, (n, _) in ref.items() if (n or 0) >= size]
        failed, speedup = _judge({k: ref[k][1] for k in keys}, {k: cases[k][1] for k in keys}, tolerance, margin)
        if failed is None and everywhere is None:
            return 0, f"{speedup:.2f}x the reference overall, never slower"
        if failed is None:
            return size, (f"{speedup:.2f}x the reference at >= {size} elements ({_scope(keys)}), "
                          f"never slower there (the threshold covers every size from there on, measured or "
                          f"not); everywhere: {everywhere}")
        everywhere = everywhere or (
            f"{failed[1]:.2f}x the reference's time at {_key_name(failed[2])}" if failed[0] == "slower"
            else f"{failed[1]:.2f}x the reference overall (needs {1 / (1 - margin):.2f}x)")
    return None, everywhere


def _scope(keys) -> str:
    return ", ".join(_key_name(k) for k in sorted(keys, key=lambda k: (k[1] or 0, k[0] or "")))


def _step_choices(ref: dict, qualified: list) -> list:
    """[(backend, min_numel)] as a step function of size, largest threshold first: at each measured
    size, every backend whose threshold admits that size, cheapest first (the later ones are
    fallbacks where the first is not available, e.g. no built extension); steps with the same ranking
    merge into the smallest size of the run. At run time the first entry whose threshold a call
    reaches and whose backend is usable wins, so between two measured sizes the smaller one's
    ranking holds."""
    sizes = sorted({n or 0 for n, _ in ref.values()})
    steps = []  # (size, ranked backends), ascending sizes
    for size in sizes:
        keys = [k for k, (n, _) in ref.items() if (n or 0) == size]
        ranked = tuple(b for _, b in sorted((sum(cases[k][1] for k in keys), backend)
                                            for backend, m, cases in qualified if m <= size))
        if ranked and not (steps and steps[-1][1] == ranked):
            steps.append((size, ranked))
    out = []
    for size, ranked in reversed(steps):
        out += [(backend, 0 if size == sizes[0] else size) for backend in ranked]
    return out


def derive(results: dict, tolerance: float = 0.05, margin: float = 0.05, mode: str = "fwdbwd") -> dict:
    """{op: {"order": [...], "cost_us_per_img": {group: {backend: cost}}, "why": str}} from one results
    document's `mode` cases (fwdbwd: eager calls; fwdbwd_graph: CUDA-graph replays). An order entry
    is a backend name or {"backend", "min_numel"[, "layer"]}. Every eq_conv2d layer kind measured also
    gets a {"backend": "ref", "layer": kind} entry after its qualifying ones: the layer measurement
    decides that kind, and the epilogue's own list does not reroute it (ops.eq_conv2d)."""
    table: dict = {}
    groups = _group_cases(results, mode)
    for (op, layer), by_backend in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        ref = by_backend.get("ref")
        if not ref:
            continue
        entry = table.setdefault(op, {"choices": [], "pins": [], "cost_us_per_img": {}, "why": []})
        group = layer or op
        costs = {"ref": round(sum(v for _, v in ref.values()) * 1e3, 4)}
        qualified = []
        for backend in RUNTIME_BACKENDS:
            cases = by_backend.get(backend)
            if not cases:
                continue
            if not set(ref) - set(cases):
                costs[backend] = round(sum(cases[k][1] for k in ref) * 1e3, 4)
            min_numel, note = _threshold(ref, cases, tolerance, margin)
            entry["why"].append(f"{group + ': ' if layer else ''}{backend}: {note}")
            if min_numel is not None:
                qualified.append((backend, min_numel, cases))
        for backend, min_numel in _step_choices(ref, qualified):
            if layer is None and min_numel == 0:
                choice = backend
            else:
                choice = {"backend": backend, "min_numel": min_numel}
                if layer is not None:
                    choice["layer"] = layer
            entry["choices"].append(choice)
        if layer is not None:
            entry["pins"].append({"backend": "ref", "min_numel": 0, "layer": layer})
        entry["cost_us_per_img"][group] = costs
    for op, entry in table.items():
        entry["order"] = entry.pop("choices") + entry.pop("pins") + ["ref"]
        if list(entry["cost_us_per_img"]) == [op]:
            entry["cost_us_per_img"] = entry["cost_us_per_img"][op]
        entry["why"] = "; ".join(entry["why"]) or "no other backend measured"
    return table


FORM_LAYERS = ("g_up", "d_down")  # layer kinds with a fused_scale form ("<kind>_fused" in the bench)


def _auto_backend(order: list, layer: str, numel: int | None) -> str:
    """The backend `auto` runs for an eq_conv2d call of `layer` kind with `numel` input elements
    under the preference list `order` (JSON form), matched as ops._backend matches it."""
    for e in map(_backend._entry, order):
        if isinstance(e, str) or e.matches(numel, layer):
            return e if isinstance(e, str) else e.backend
    return "ref"


def derive_forms(results: dict, tolerance: float = 0.05, margin: float = 0.05, derived: dict | None = None) -> dict:
    """{layer kind: {"form": "fused" | "unfused", "min_numel": N, "why": str}} for G's up-convs and D's
    down-convs: at each resolution measured in both forms, the fwdbwd time of what `auto` would run
    for each form (the backend `derived`'s eq_conv2d list picks for that kind and size; the reference
    without it), judged by the backends' size-threshold rule (`_threshold`): the fused form from the
    smallest input size at which it is never slower and at least `margin` cheaper from there on
    (min_numel 0: at every size). The official code's default is the same kind of switch, by
    resolution: fused_scale from 128 px on."""
    order = (derived or {}).get("eq_conv2d", {}).get("order", ["ref"])
    groups = _group_cases(results, "fwdbwd")
    forms = {}
    for kind in FORM_LAYERS:
        plain, fused = groups.get(("eq_conv2d", kind), {}), groups.get(("eq_conv2d", kind + "_fused"), {})
        shared = sorted(r for _, r in plain.get("ref", {}) if (kind + "_fused", r) in fused.get("ref", {}))
        if not shared:
            continue

        def run(by_backend, layer, res):  # what auto runs there (the reference where that was not measured)
            numel, ref_ms = by_backend["ref"][(layer, res)]
            return by_backend.get(_auto_backend(order, layer, numel), {}).get((layer, res), (numel, ref_ms))[1]
        # both forms keyed by resolution, sized by the layer's input (the same x for both forms)
        t_plain = {(kind, r): (plain["ref"][(kind, r)][0], run(plain, kind, r)) for r in shared}
        t_fused = {(kind, r): (plain["ref"][(kind, r)][0], run(fused, kind + "_fused", r)) for r in shared}
        min_numel, note = _threshold(t_plain, t_fused, tolerance, margin)
        note = note.replace("the reference", "the unfused form")
        if min_numel is None:
            forms[kind] = {"form": "unfused", "why": f"fused: {note} (each form on the backend auto runs for it)"}
        else:
            forms[kind] = {"form": "fused", "min_numel": min_numel,
                           "why": f"fused: {note} (each form on the backend auto runs for it)"}
    return forms


def _key_name(key) -> str:
    layer, res = key
    return f"{layer + ' ' if layer else ''}r{res}"


def format_choice(choice) -> str:
    if isinstance(choice, str):
        return choice
    parts = ([choice["layer"]] if choice.get("layer") else []) + (
        [f">={choice['min_numel'] / 1e6:.3g}M"] if choice.get("min_numel") else [])
    return f"{choice['backend']}({', '.join(parts)})"


def write(results: dict, derived: dict, source: str, table_path: str = TABLE_PATH,
          tolerance: float = 0.05, margin: float = 0.05, derived_graph: dict | None = None,
          forms: dict | None = None) -> str:
    """Replace the results' architecture entry in the table file; returns the architecture."""
    arch = _arch(results.get("env", {}))
    try:
        with open(table_path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        doc = {}
    doc.setdefault("comment", "impl='auto' on CUDA: backend preference per GPU architecture and op. "
                              "Written by `python -m bench.auto_table RESULTS.json --write`; do not edit by hand.")
    env = results.get("env", {})
    doc.setdefault("archs", {})[arch] = {
        "source": source,
        "device": env.get("device"), "torch": env.get("torch"), "triton": env.get("triton"),
        "git_commit": env.get("git_commit"), "date": env.get("date"),
        # the Triton eq_conv2d the layer cases measured: cuDNN conv + fused epilogue, or igemm
        "triton_conv": env.get("triton_conv", "epilogue"),
        "rule": f"fwdbwd time per image summed over the measured cases with numel >= the smallest qualifying "
                f"threshold (per eq_conv2d layer kind); never > {tolerance:.0%} slower than ref in any of them, "
                f">= {margin:.0%} cheaper in total",
        "ops": {op: entry["order"] for op, entry in derived.items()},
        "evidence": {op: {"cost_us_per_img": entry["cost_us_per_img"], "why": entry["why"]}
                     for op, entry in derived.items()},
    }
    if forms:
        doc["archs"][arch]["forms"] = {kind: f["form"] if not f.get("min_numel") else
                                       {"form": f["form"], "min_numel": f["min_numel"]} for kind, f in forms.items()}
        doc["archs"][arch]["forms_evidence"] = {kind: f["why"] for kind, f in forms.items()}
    if derived_graph:
        doc["archs"][arch]["graph_ops"] = {op: entry["order"] for op, entry in derived_graph.items()}
        doc["archs"][arch]["graph_evidence"] = {op: {"cost_us_per_img": entry["cost_us_per_img"], "why": entry["why"]}
                                                for op, entry in derived_graph.items()}
    doc["archs"] = dict(sorted(doc["archs"].items()))
    with open(table_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return arch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.auto_table", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a results JSON (bench.report convert) or a raw pytest-benchmark JSON")
    p.add_argument("--write", action="store_true", help="update the table file for the results' GPU architecture")
    p.add_argument("--table", default=TABLE_PATH)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--margin", type=float, default=0.05)
    args = p.parse_args(argv)
    results = load_results(args.results)
    derived = derive(results, args.tolerance, args.margin)
    derived_graph = derive(results, args.tolerance, args.margin, mode="fwdbwd_graph")
    forms = derive_forms(results, args.tolerance, args.margin, derived)
    if not derived:
        print("auto_table: no fwdbwd op/layer cases with a reference in these results", file=sys.stderr)
        return 2
    try:
        arch = _arch(results.get("env", {}))
    except ValueError as exc:
        arch = f"(unknown: {exc})"
    print(f"auto table for {arch} from {args.results}:")
    for title, table in (("eager calls", derived), ("inside CUDA graphs (graph_ops)", derived_graph)):
        if table:
            print(f" {title}:")
        for op, entry in table.items():
            order = " > ".join(format_choice(c) for c in entry["order"])
            print(f"  {op:22s} {order:22s}  {entry['why']}")
    for kind, f in forms.items():
        size = f" from {f['min_numel']} input elements" if f.get("min_numel") else ""
        print(f" resampling form of {kind}: {f['form']}{size}  ({f['why']})")
    if args.write:
        source = os.path.relpath(os.path.abspath(args.results), REPO)
        arch = write(results, derived, source.replace(os.sep, "/"), args.table, args.tolerance, args.margin,
                     derived_graph, forms)
        print(f"wrote {arch} to {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
