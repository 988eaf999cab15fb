"""Turn pytest-benchmark JSON into progan_fast results (JSON + markdown) and catch regressions.

  python -m bench.report convert BENCH.json [MORE.json ...] [--out results.json] [--md results.md]
                                 [--save] [--command CMD]
  python -m bench.report compare NEW.json [--against OLD.json] [--threshold 0.10] [--min-ms 0.005]
  python -m bench.report speed-table RESULTS.json
  python -m bench.report merge BASE.json NEWER.json [...] --out merged.json [--save]

`convert` merges one or more `--benchmark-json` files (from one run: e.g. ops, layers and steps as
separate invocations) into one results document: environment, ceilings and one record per case
(median ms, img/s, GB/s, TFLOP/s, fraction of the roofline ceiling, speedup vs the eager reference
in the same run). `--save` also writes bench/results/<date>_<device class>_<commit>.json.

`compare` matches cases by id and exits 1 when any case is more than `threshold` slower than the
baseline; without `--against` the baseline is the newest bench/results/ file of the same device
class. Either side may be a results JSON or a raw pytest-benchmark JSON.

`merge` brings a follow-up run that re-measured some ops or layers into a full run of the same device
class: each op, layer kind, step resolution or loader that a newer file measured replaces all of the
older file's cases of it (every backend, size and mode), so a comparison between backends (the auto
table's rule) never mixes two runs. The environment is the base file's, with `merged_from` recording
each newer file, its commit and what it replaced; `--save` writes
bench/results/<newest date>_<class>_<newest commit>_merged.json.

`speed-table` prints the README's training-step table: one row per resolution (batch), one column
per step variant measured, img/s with the speedup over eager fp32 of the same run, and MFU at
>= 128 px (issue targets: >= 2x eager fp32, >= 1.5x eager AMP, >= 1.2x torch.compile AMP, >= 5x eager
with CUDA graphs at 4-16 px).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SCHEMA = "progan_fast.bench/1"


# ------------------------------------------------------------------------------------------ convert

def _case_from_benchmark(b: dict) -> dict:
    info = dict(b.get("extra_info") or {})
    stats = b.get("stats") or {}
    median_s = stats.get("median")
    case = {
        "id": info.pop("case_id", None) or b.get("fullname") or b.get("name"),
        "test": b.get("name"),
        "median_ms": median_s * 1e3 if median_s is not None else info.get("median_ms"),
        "iqr_ms": stats["iqr"] * 1e3 if stats.get("iqr") is not None else None,
        "rounds": stats.get("rounds"),
        "iterations": stats.get("iterations"),
    }
    info.pop("median_ms", None)
    info.pop("group", None)
    calls = info.get("graph_calls") or 1  # a graph replay of several op calls: per-call times
    for key in ("median_ms", "iqr_ms"):
        if case[key] is not None:
            case[key] /= calls
    case.update(info)
    return case


def convert(raw_docs: list[dict], command: str | None = None) -> dict:
    """One results document from one or more pytest-benchmark JSON documents of the same run."""
    cases, env, ceilings, settings = [], {}, None, {}
    for doc in raw_docs:
        meta = doc.get("progan_fast") or {}
        env = env or dict(meta.get("env") or {})
        ceilings = ceilings or meta.get("ceilings")
        settings = settings or meta.get("settings") or {}
        cases += [_case_from_benchmark(b) for b in doc.get("benchmarks", [])]
    if not env and raw_docs:  # a JSON from outside this suite: fall back on pytest-benchmark's own info
        mi = raw_docs[0].get("machine_info", {})
        env = {"device": mi.get("cpu", {}).get("brand_raw", "unknown"), "device_class": "unknown",
               "date": raw_docs[0].get("datetime"), "git_commit": raw_docs[0].get("commit_info", {}).get("id")}
    if command:
        env["command"] = command
    by_id = {c["id"]: c for c in cases}
    for c in cases:
        base = by_id.get(c.get("baseline_id"))
        if base is not None and c.get("median_ms") and base.get("median_ms"):
            c["speedup_vs_eager"] = base["median_ms"] / c["median_ms"]
    return {"schema": SCHEMA, "env": env, "ceilings": ceilings, "settings": settings, "cases": cases}


def load_results(path: str) -> dict:
    """A results document from a results JSON or a raw pytest-benchmark JSON."""
    with open(path) as f:
        doc = json.load(f)
    if doc.get("schema") == SCHEMA:
        return doc
    if "benchmarks" in doc:
        return convert([doc])
    raise ValueError(f"{path}: neither a progan_fast results JSON nor a pytest-benchmark JSON")


def _fmt(v, spec=None):
    """Blank for None; `spec` if given, else 3 significant digits below 100 and integers above."""
    if v is None:
        return ""
    if spec:
        return format(v, spec)
    return format(v, ",.0f") if abs(v) >= 100 else format(v, ".3g")


def markdown(res: dict) -> str:
    env, ceil = res.get("env", {}), res.get("ceilings") or {}
    lines = [f"## progan_fast bench: {env.get('device', '?')}", "",
             f"torch {env.get('torch')} · CUDA {env.get('cuda')} · triton {env.get('triton')} · "
             f"commit {commits(env) if env.get('merged_from') else str(env.get('git_commit'))[:10]}"
             f"{' (dirty)' if env.get('git_dirty') else ''} · "
             f"{env.get('date')}", ""]
    if ceil:
        lines += [f"Ceilings (measured in this run): copy {ceil.get('copy_gbps', 0):.1f} GB/s (read+write), "
                  f"{ceil.get('matmul_dtype')} matmul {ceil.get('matmul_tflops', 0):.2f} TFLOP/s", ""]
    lines += ["| case | median ms | img/s | GB/s | TFLOP/s | % of ceiling | vs eager |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for c in res.get("cases", []):
        frac = c.get("frac_ceiling")
        bound = {"memory": " (mem)", "compute": " (flop)"}.get(c.get("bound"), "")
        speed = c.get("speedup_vs_eager")
        lines.append(f"| {c['id']} | {_fmt(c.get('median_ms'), '.4f')} | {_fmt(c.get('img_s'), ',.0f')} | "
                     f"{_fmt(c.get('gbps'))} | {_fmt(c.get('tflops'))} | "
                     f"{_fmt(frac * 100 if frac is not None else None, '.1f')}{bound if frac is not None else ''} | "
                     f"{_fmt(speed, '.2f') + 'x' if speed is not None else ''} |")
    return "\n".join(lines) + "\n"


def saved_name(res: dict) -> str:
    env = res.get("env", {})
    date = (env.get("date") or datetime.datetime.now(datetime.timezone.utc).isoformat())[:19]
    date = date.replace(":", "").replace("-", "")
    return f"{date}_{env.get('device_class', 'unknown')}_{str(env.get('git_commit') or 'nogit')[:8]}.json"


# ------------------------------------------------------------------------------------------ merge

# bench layer names whose calls the runtime classifies as another kind (ops._backend.conv_layer_kind)
LAYER_ALIASES = {"d_mbstd_conv": "d_conv"}


def _merge_group(case: dict) -> str:
    """What a re-measurement replaces as a whole, the first two parts of the case id: an op
    (`op/pixel_norm`; host-cost cases apart, `host/pixel_norm`), a conv layer kind with its fused
    form and aliases (`layer/d_down` holds `layer/d_down_fused`: bench.auto_table compares the two
    forms), a step resolution (`step/r64`), a loader resolution (`data/r64`)."""
    kind, name = (str(case.get("id")).split("/") + [""])[:2]
    if kind == "layer":
        name = name[:-len("_fused")] if name.endswith("_fused") else name
        name = LAYER_ALIASES.get(name, name)
    return f"{kind}/{name}"


def _ids_by_group(cases) -> dict:
    out: dict = {}
    for c in cases:
        out.setdefault(_merge_group(c), set()).add(c.get("id"))
    return out


def merge(base: dict, newer: list[tuple[str, dict]]) -> dict:
    """`base` with every group (see _merge_group) that a newer results document measured replaced by
    that document's cases; later documents win. All must share the base's device class."""
    device_class = base.get("env", {}).get("device_class")
    cases = list(base.get("cases", []))
    env = dict(base.get("env", {}))
    env.setdefault("base_date", env.get("date"))
    env.setdefault("base_git_commit", env.get("git_commit"))
    env["merged_from"] = list(env.get("merged_from", []))
    for path, doc in newer:
        other = doc.get("env", {}).get("device_class")
        if other != device_class:
            raise ValueError(f"merge: {path} is from device class {other!r}, the base from {device_class!r}")
        old, new = _ids_by_group(cases), _ids_by_group(doc.get("cases", []))
        # groups the follow-up measured on fewer backends / sizes / modes: the other cases are lost
        narrower = sorted(group for group in new if old.get(group, set()) - new[group])
        cases = [c for c in cases if _merge_group(c) not in new] + list(doc.get("cases", []))
        env["merged_from"].append({"file": os.path.basename(path), "git_commit": doc.get("env", {}).get("git_commit"),
                                   "date": doc.get("env", {}).get("date"), "replaced": sorted(new),
                                   "narrower": narrower})
        # the newest run dates the document (latest_baseline, the table's provenance); the base's stay
        env["date"], env["git_commit"] = doc.get("env", {}).get("date"), doc.get("env", {}).get("git_commit")
    return {**base, "env": env, "cases": cases}


def merged_name(res: dict) -> str:
    return saved_name(res)[:-len(".json")] + "_merged.json"


def commits(env: dict) -> str:
    """'abc12345', or 'base 12345678 + abc12345' for a merged document."""
    if not env.get("merged_from"):
        return str(env.get("git_commit"))[:8]
    return " + ".join([f"base {str(env.get('base_git_commit'))[:8]}"] +
                      [str(m.get("git_commit"))[:8] for m in env["merged_from"]])


# ------------------------------------------------------------------------------------------ speed table

STEP_COLUMNS = (("eager_fp32", "eager fp32"), ("eager_amp", "eager AMP (bf16)"),
                ("compile_amp", "torch.compile AMP (G only)"), ("fast", "progan_fast (auto) + AMP"),
                ("fast_graph", "progan_fast + CUDA graph"), ("triton_amp", "all Triton + AMP"),
                ("cuda_amp", "all CUDA ext + AMP"))


def speed_table(res: dict) -> str:
    """Markdown: training-step img/s per resolution and variant (speedup vs eager fp32, MFU >= 128 px)."""
    steps: dict = {}
    for c in res.get("cases", []):
        if c.get("kind") == "step" and c.get("img_s"):
            steps.setdefault((c["res"], c.get("batch")), {})[c.get("variant")] = c
    if not steps:
        return "(no training-step cases in these results)\n"
    columns = [(v, title) for v, title in STEP_COLUMNS if any(v in row for row in steps.values())]
    env = res.get("env", {})
    lines = [f"{env.get('device', '?')}, torch {env.get('torch')}, Triton {env.get('triton')}, "
             f"{str(env.get('date'))[:10]}, commit {commits(env)}; img/s (x eager fp32):", "",
             "| resolution (batch) | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for (r, batch), row in sorted(steps.items()):
        base = row.get("eager_fp32", {}).get("img_s")
        cells = []
        for variant, _ in columns:
            c = row.get(variant)
            if c is None:
                cells.append("–")
                continue
            cell = _fmt(c["img_s"], ",.0f")
            if base and variant != "eager_fp32":
                cell += f" ({c['img_s'] / base:.2f}x)"
            mfu = c.get("mfu", c.get("frac_ceiling"))
            if r >= 128 and mfu is not None:
                cell += f", MFU {100 * mfu:.1f}%"
            cells.append(cell)
        lines.append(f"| {r} px ({batch}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ compare

def latest_baseline(device_class: str, results_dir: str = RESULTS_DIR, exclude: str | None = None) -> str | None:
    """Newest results file (by its recorded date) of the same device class, or None."""
    best, best_date = None, ""
    if not os.path.isdir(results_dir):
        return None
    for name in os.listdir(results_dir):
        path = os.path.join(results_dir, name)
        if not name.endswith(".json") or (exclude and os.path.abspath(path) == os.path.abspath(exclude)):
            continue
        try:
            doc = load_results(path)
        except (ValueError, OSError, json.JSONDecodeError):
            continue
        env = doc.get("env", {})
        if env.get("device_class") == device_class and str(env.get("date") or "") >= best_date:
            best, best_date = path, str(env.get("date") or "")
    return best


def compare(new: dict, old: dict, threshold: float = 0.10, min_ms: float = 0.0) -> dict:
    """Cases more than `threshold` slower (median) in `new` than in `old`. Cases faster than
    `min_ms` in the baseline are reported but never counted (timer noise dominates them)."""
    old_by_id = {c["id"]: c for c in old.get("cases", []) if c.get("median_ms")}
    rows, regressions, improvements, missing = [], [], [], []
    new_ids = set()
    for c in new.get("cases", []):
        new_ids.add(c["id"])
        o = old_by_id.get(c["id"])
        if o is None or not c.get("median_ms"):
            continue
        ratio = c["median_ms"] / o["median_ms"]
        row = {"id": c["id"], "old_ms": o["median_ms"], "new_ms": c["median_ms"], "ratio": ratio}
        rows.append(row)
        if ratio > 1.0 + threshold and o["median_ms"] >= min_ms:
            regressions.append(row)
        elif ratio < 1.0 / (1.0 + threshold):
            improvements.append(row)
    missing = sorted(set(old_by_id) - new_ids)
    return {"rows": rows, "regressions": regressions, "improvements": improvements, "missing": missing,
            "threshold": threshold}


def _print_compare(result: dict, new_path: str, old_path: str) -> None:
    print(f"compare {new_path} against {old_path}: {len(result['rows'])} common cases, "
          f"threshold {result['threshold'] * 100:.0f}%")
    for title, rows in (("REGRESSIONS", result["regressions"]), ("improvements", result["improvements"])):
        if rows:
            print(f"{title} ({len(rows)}):")
            for r in sorted(rows, key=lambda r: -r["ratio"]):
                print(f"  {r['id']:60s} {r['old_ms']:10.4f} ms -> {r['new_ms']:10.4f} ms  x{r['ratio']:.2f}")
    if result["missing"]:
        print(f"{len(result['missing'])} baseline cases not in the new run (not counted)")


# ------------------------------------------------------------------------------------------ CLI

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pc = sub.add_parser("convert", help="pytest-benchmark JSON(s) -> results JSON + markdown")
    pc.add_argument("inputs", nargs="+")
    pc.add_argument("--out", help="results JSON path")
    pc.add_argument("--md", help="markdown table path (default: print)")
    pc.add_argument("--save", action="store_true", help="also write bench/results/<date>_<class>_<commit>.json")
    pc.add_argument("--command", help="the command that produced the inputs (recorded)")
    pm = sub.add_parser("compare", help="exit 1 when a case got slower than the threshold")
    pm.add_argument("new")
    pm.add_argument("--against", help="baseline (default: newest bench/results/ file of the same device class)")
    pm.add_argument("--threshold", type=float, default=0.10)
    pm.add_argument("--min-ms", type=float, default=0.0, help="ignore cases faster than this in the baseline")
    pm.add_argument("--results-dir", default=RESULTS_DIR)
    ps = sub.add_parser("speed-table", help="the README's training-step table from a results file")
    ps.add_argument("results")
    pg = sub.add_parser("merge", help="a full run with the groups a follow-up re-measured replaced")
    pg.add_argument("base")
    pg.add_argument("newer", nargs="+")
    pg.add_argument("--out", help="merged results JSON path")
    pg.add_argument("--save", action="store_true", help="also write bench/results/<date>_<class>_<commit>_merged.json")
    pg.add_argument("--md", help="markdown table path")
    args = p.parse_args(argv)

    if args.cmd == "merge":
        try:
            res = merge(load_results(args.base), [(path, load_results(path)) for path in args.newer])
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        for m in res["env"]["merged_from"]:
            for group in m["narrower"]:
                print(f"merge: warning: {m['file']} measured {group} on fewer backends, sizes or modes than "
                      "the file it replaces there: those cases are gone from the merged file", file=sys.stderr)
        text = json.dumps(res, indent=1, sort_keys=False)
        targets = ([args.out] if args.out else []) + ([os.path.join(RESULTS_DIR, merged_name(res))] if args.save else [])
        for path in targets:
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {path}")
        if args.md:
            with open(args.md, "w") as f:
                f.write(markdown(res))
        return 0

    if args.cmd == "speed-table":
        print(speed_table(load_results(args.results)), end="")
        return 0

    if args.cmd == "convert":
        docs = []
        for path in args.inputs:
            try:
                with open(path) as f:
                    docs.append(json.load(f))
            except (OSError, json.JSONDecodeError) as exc:  # a stage that timed out: keep the rest
                print(f"report: skipping {path}: {exc}", file=sys.stderr)
        if not docs:
            print("report: no readable input", file=sys.stderr)
            return 2
        res = convert(docs, command=args.command)
        text = json.dumps(res, indent=1, sort_keys=False)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        if args.save:
            os.makedirs(RESULTS_DIR, exist_ok=True)
            path = os.path.join(RESULTS_DIR, saved_name(res))
            with open(path, "w") as f:
                f.write(text)
            print(f"saved {path}")
        md = markdown(res)
        if args.md:
            with open(args.md, "w") as f:
                f.write(md)
        else:
            print(md)
        return 0

    new = load_results(args.new)
    against = args.against or latest_baseline(new.get("env", {}).get("device_class", "unknown"),
                                              args.results_dir, exclude=args.new)
    if against is None:
        print(f"compare: no baseline for device class {new.get('env', {}).get('device_class')!r} "
              f"in {args.results_dir}; nothing to compare")
        return 0
    old = load_results(against)
    if old.get("env", {}).get("device_class") != new.get("env", {}).get("device_class"):
        print(f"compare: warning: device classes differ ({old.get('env', {}).get('device_class')} vs "
              f"{new.get('env', {}).get('device_class')})")
    result = compare(new, old, args.threshold, args.min_ms)
    _print_compare(result, args.new, against)
    return 1 if result["regressions"] else 0


if __name__ == "__main__":
    sys.exit(main())
