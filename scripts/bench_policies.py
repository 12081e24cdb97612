"""The batching policies on the same 2-stage pipeline and workloads, measured in one run.

    python scripts/bench_policies.py [--num-requests 32] [--length-scale 0.1] [--token-budget 128]
                                     [--policies sarathi,throttle,orca,vllm,static] [--workloads trace,decode,prefill]

throttle is gLLM's token throttling (prefill tokens by pending prefill work and KV free room), compared with
sarathi and orca on the same runs.

Workloads: a sample of a real trace (../shared/data/traces/splitwise_conv.csv, lengths scaled to fit a CPU,
all arriving at once), a decode-heavy and a prefill-heavy synthetic mix on SmolLM2, and issue 14's long-prompt
sample (``long``: 24 requests, prompts ~640 tokens, outputs ~47, on a random Llama with hidden 384 and 8
layers, made once under the system's temp dir; no download; ``--num-requests`` and ``--length-scale`` do not
apply to it). Reports throughput, TTFT and
time-between-tokens percentiles and per-stage bubble fractions (whole run and steady state) as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.jobs import ROOT, machine, random_llama, run_torchrun  # noqa: E402

# The real request traces (CSV of lengths, see pp_runtime/workloads/trace.py): not in the repository; by default the
# shared folder next to the checkout, else PP_RUNTIME_TRACES.
# A relative PP_RUNTIME_TRACES is the caller's: the jobs run from the checkout.
TRACES = Path(os.environ.get("PP_RUNTIME_TRACES") or ROOT.parent / "shared" / "data" / "traces").absolute()
TRACE_NAME = "splitwise_conv.csv"


def trace_files() -> list[Path]:
    """The traces' CSV files; exits naming the folder and PP_RUNTIME_TRACES when there are none."""
    files = sorted(TRACES.glob("*.csv"))
    if not files:
        raise SystemExit(f"no request traces (*.csv) in {TRACES}: set PP_RUNTIME_TRACES to the folder that holds "
                         f"them (e.g. splitwise_conv.csv from https://github.com/microsoft/vidur/tree/main/data/"
                         f"processed_traces)")
    return files


def trace_file() -> Path:
    """The ``trace`` workload's CSV (``TRACES / TRACE_NAME``); exits at once, before any job starts, naming where it
    looked and PP_RUNTIME_TRACES when it is not there."""
    path = TRACES / TRACE_NAME
    if not path.is_file():
        source = "PP_RUNTIME_TRACES" if os.environ.get("PP_RUNTIME_TRACES") else "the default, next to the checkout"
        raise SystemExit(f"no request traces: {path} not found (looked in {TRACES}, from {source}); set "
                         f"PP_RUNTIME_TRACES to the folder that holds {TRACE_NAME} (from https://github.com/microsoft/"
                         f"vidur/tree/main/data/processed_traces), or leave trace out of --workloads")
    return path


LONG_PROMPT_REQUESTS, LONG_PROMPT_LEN, LONG_OUTPUT_LEN = 24, 640, 47  # issue 14's long-prompt sample


def long_prompt_model(root: Path | None = None) -> Path:
    """A random Llama (hidden 384, 8 layers, SmolLM2's vocabulary size), saved once under ``root``."""
    path = (root or Path(tempfile.gettempdir()) / "pp_runtime_bench_models") / "llama-384x8"
    return random_llama(path, hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
                        num_key_value_heads=2)


def workloads(args) -> dict[str, list[str]]:
    """Hydra overrides per workload name; the long-prompt model is made, and the trace file looked for (exits when
    missing), only when ``args.workloads`` names them."""
    n = args.num_requests
    names = args.workloads.split(",")
    trace = trace_file() if "trace" in names else TRACES / TRACE_NAME
    long = ["workload=synthetic", f"workload.num_requests={LONG_PROMPT_REQUESTS}",
            f"workload.prefill_len={LONG_PROMPT_LEN}", f"workload.pd_ratio={LONG_PROMPT_LEN / LONG_OUTPUT_LEN:.4f}"]
    if "long" in names:
        long.append(f"model.path={long_prompt_model()}")
    return {
        "trace": ["workload=trace", f"workload.path={trace}", f"workload.num_requests={n}",
                  f"workload.length_scale={args.length_scale}"],
        "decode": ["workload=synthetic", f"workload.num_requests={n}", "workload.prefill_len=32",
                   "workload.pd_ratio=0.5"],
        "prefill": ["workload=synthetic", f"workload.num_requests={n}", "workload.prefill_len=192",
                    "workload.pd_ratio=12"],
        "long": long,
    }


def _fmt(v, digits=1):
    return "" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--length-scale", type=float, default=0.1)
    ap.add_argument("--token-budget", type=int, default=128)
    ap.add_argument("--policies", default="sarathi,throttle,orca,vllm,static")
    ap.add_argument("--workloads", default="trace,decode,prefill")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = ap.parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench_policies_"))).absolute()
    all_workloads = workloads(args)  # exits at once when the trace workload has no trace file
    print(f"machine: {machine()}; 2 stages, one thread per rank; scheduler.token_budget={args.token_budget}")
    for name in args.workloads.split(","):
        rows = []
        for policy in args.policies.split(","):
            run_dir = out / name / policy
            m = run_torchrun(2, [*all_workloads[name], f"scheduler={policy}",
                                 f"scheduler.token_budget={args.token_budget}", *args.extra], run_dir)
            bubbles = json.loads((run_dir / "bubbles.json").read_text())
            rows.append((policy, m, bubbles))
        print(f"\n### workload `{name}`: {' '.join(all_workloads[name])}\n")
        print("| policy | output tok/s | total tok/s | TTFT p50 / p99 s | TBT p50 / p99 ms | bubble stage 0 / 1 "
              "| steady bubble stage 0 / 1 | pipeline steady bubble |")
        print("|---|---|---|---|---|---|---|---|")
        for policy, m, b in rows:
            st = b["stages"]
            ttft = f"{_fmt(m['median_ttft_ms'] and m['median_ttft_ms'] / 1e3, 2)} / " \
                   f"{_fmt(m['p99_ttft_ms'] and m['p99_ttft_ms'] / 1e3, 2)}"
            tbt = f"{_fmt(m['median_itl_ms'])} / {_fmt(m['p99_itl_ms'])}"
            print(f"| {policy} | {m['output_throughput']:.2f} | {m['total_token_throughput']:.1f} | {ttft} | {tbt} | "
                  f"{st['0']['bubble_fraction']:.1%} / {st['1']['bubble_fraction']:.1%} | "
                  f"{st['0']['steady_bubble_fraction']:.1%} / {st['1']['steady_bubble_fraction']:.1%} | "
                  f"{b['pipeline']['steady_bubble_fraction']:.1%} |")
        by = {p: (m, b) for p, m, b in rows}
        for policy in ("sarathi", "throttle"):
            if policy in by and "orca" in by:
                s_m, s_b = by[policy]
                o_m, o_b = by["orca"]
                ratio = o_b["pipeline"]["steady_bubble_fraction"] / max(s_b["pipeline"]["steady_bubble_fraction"], 1e-9)
                print(f"\n{policy} vs orca: steady bubble {ratio:.2f}x lower, throughput "
                      f"{s_m['total_token_throughput'] / o_m['total_token_throughput']:.2f}x")
    print(f"\nruns in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
