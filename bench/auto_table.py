"""Derive `impl="auto"`'s per-architecture backend table from a bench results file.

  python -m bench.auto_table RESULTS.json [--write] [--table progan_fast/ops/auto_backends.json]

For each op (the fused ops, and `eq_conv2d` from every conv-layer case) the rule compares the
forward+backward cases of each runtime backend (triton, cuda) with the eager reference measured
in the same run:

- cost = sum over the measured cases of median_ms / batch: time per training image, because
  every resolution of PGGAN's schedule trains on the same number of images;
- a backend qualifies if it was measured wherever the reference was, is never more than
  `--tolerance` (5 %) slower than the reference in any one case, and costs at least `--margin`
  (5 %) less in total;
- the preference order is the qualifying backends, cheapest first, then "ref" (always the last
  fallback). Nothing qualifies: ("ref",).

Without --write it prints the table; with it, it replaces the entry of the results' GPU
architecture (sm_XY from env.device_capability) in the table file, recording the source file,
device, versions, date and rule, and leaves other architectures alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

from .report import load_results

RUNTIME_BACKENDS = ("cuda", "triton")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_PATH = os.path.join(REPO, "progan_fast", "ops", "auto_backends.json")


def _arch(env: dict) -> str:
    cap = env.get("device_capability")
    if not cap:
        raise ValueError("results have no env.device_capability (not a GPU run?)")
    major, minor = str(cap).split(".")[:2]
    return f"sm_{major}{minor}"


def derive(results: dict, tolerance: float = 0.05, margin: float = 0.05) -> dict:
    """{op: {"order": [...], "cost_us_per_img": {backend: cost}, "why": str}} from one results document."""
    # (op) -> backend -> {case key: per-image ms}
    per_op: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for c in results.get("cases", []):
        if c.get("kind") not in ("op", "layer") or c.get("mode") != "fwdbwd" or not c.get("median_ms"):
            continue
        backend = c.get("backend")
        if backend not in ("ref",) + RUNTIME_BACKENDS:
            continue
        key = (c.get("layer"), c.get("res"))
        per_op[c["op"]][backend][key] = c["median_ms"] / max(1, c.get("batch") or 1)
    table = {}
    for op, by_backend in sorted(per_op.items()):
        ref = by_backend.get("ref")
        if not ref:
            continue
        ref_cost = sum(ref.values())
        costs = {"ref": ref_cost * 1e3}
        qualified, notes = [], []
        for backend in RUNTIME_BACKENDS:
            cases = by_backend.get(backend)
            if not cases:
                continue
            if set(ref) - set(cases):
                notes.append(f"{backend}: not measured at every reference case")
                continue
            cost = sum(cases[k] for k in ref)
            costs[backend] = cost * 1e3
            worst_key = max(ref, key=lambda k: cases[k] / ref[k])
            worst = cases[worst_key] / ref[worst_key]
            if worst > 1.0 + tolerance:
                notes.append(f"{backend}: {worst:.2f}x the reference's time at {_key_name(worst_key)}")
            elif cost > (1.0 - margin) * ref_cost:
                notes.append(f"{backend}: {ref_cost / cost:.2f}x the reference overall (needs {1 / (1 - margin):.2f}x)")
            else:
                qualified.append((cost, backend))
                notes.append(f"{backend}: {ref_cost / cost:.2f}x the reference overall, never slower")
        order = [b for _, b in sorted(qualified)] + ["ref"]
        table[op] = {"order": order, "cost_us_per_img": {k: round(v, 4) for k, v in costs.items()},
                     "why": "; ".join(notes) or "no other backend measured"}
    return table


def _key_name(key) -> str:
    layer, res = key
    return f"{layer + ' ' if layer else ''}r{res}"


def write(results: dict, derived: dict, source: str, table_path: str = TABLE_PATH,
          tolerance: float = 0.05, margin: float = 0.05) -> str:
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
        "rule": f"fwdbwd time per image summed over the measured resolutions; never > {tolerance:.0%} slower "
                f"than ref in any case, >= {margin:.0%} cheaper overall",
        "ops": {op: entry["order"] for op, entry in derived.items()},
        "evidence": {op: {"cost_us_per_img": entry["cost_us_per_img"], "why": entry["why"]}
                     for op, entry in derived.items()},
    }
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
    if not derived:
        print("auto_table: no fwdbwd op/layer cases with a reference in these results", file=sys.stderr)
        return 2
    try:
        arch = _arch(results.get("env", {}))
    except ValueError as exc:
        arch = f"(unknown: {exc})"
    print(f"auto table for {arch} from {args.results}:")
    for op, entry in derived.items():
        costs = ", ".join(f"{b} {c:.3f}" for b, c in entry["cost_us_per_img"].items())
        print(f"  {op:22s} {' > '.join(entry['order']):22s} [us/img: {costs}]  {entry['why']}")
    if args.write:
        source = os.path.relpath(os.path.abspath(args.results), REPO)
        arch = write(results, derived, source.replace(os.sep, "/"), args.table, args.tolerance, args.margin)
        print(f"wrote {arch} to {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
