"""Long prompts across the pipeline (issue 17): TTFT of one long prompt vs stages and chunk size, and fair sharing.

    python scripts/bench_long_prompt.py cpu [--prompt-len 4096] [--chunk 256]        # real runs, random Llama
    python scripts/bench_long_prompt.py sim                                           # pp-sim studies, H100 roofline
    python scripts/bench_long_prompt.py fairness [--cpu]                              # 1 long + 16 short prompts
    python scripts/bench_long_prompt.py orders                                        # prefill orders, real traces

cpu: a random Llama of about SmolLM2's size (hidden 512, 8 layers), one prompt, one output token, on 1 stage,
2 stages with one chunk in flight (scheduler.max_chunks_in_flight=1, the old behaviour) and 2 stages with chunk
pipelining (the default). sim: Llama-3.1-8B shape on simulated H100s: one 4k / 32k / 128k prompt on 1-8 stages
and several chunk sizes, TTFT, every stage's bubble and the strong-scaling efficiency TTFT(1) / (S x TTFT(S)),
next to SGLang's 82.8%. fairness: one 4000-token prompt and 16 of 64 tokens (all at t=0), fcfs vs fair vs
deadline prefill order, 1 and 2 stages: the short prompts' TTFT p50 against theirs without the long prompt, the
long TTFT against its own alone, Jain's index over the TTFT slowdowns (cost model), and throughput; plus an
offline batch (the same mix, 4 times) where fair must cost no throughput against FCFS; and the short requests'
decodes (largest and median gap between tokens, end-to-end p50), which deadline order holds back once. Rows
"short prompts with 1 output token" run the mix with no short decodes to ride along the long prompt's chunks:
what serving the short prompts' prefill first costs it by itself, the floor of any order that does.
orders: the three prefill orders on the real request traces (``../shared/data/traces`` or the folder
``PP_RUNTIME_TRACES`` names; full lengths, 256 requests arriving at 20/s: more than one simulated H100 serves, so
the queue grows), 1 and 2 stages: throughput, TTFT p50 / p99 and inter-token latency p99, i.e. what
``deadline``'s held decodes cost when the pipeline is overloaded. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.jobs import machine, random_llama, run_torchrun  # noqa: E402

SGLANG_EFFICIENCY = 0.828  # SGLang chunked pipeline parallelism's reported strong-scaling efficiency


def _write(path: Path, requests: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def _prompt(n: int, seed: int) -> list[int]:
    return [(seed * 7919 + 31 * j) % 40000 + 2 for j in range(n)]


def _cpu_model(root: Path) -> Path:
    return random_llama(root / "llama-512x8", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=8192)


def cpu(args) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_long_cpu_"))
    model = _cpu_model(out)
    path = _write(out / "long.jsonl", [{"id": "long", "prompt_token_ids": _prompt(args.prompt_len, 1),
                                        "max_tokens": 1, "ignore_eos": True}])
    common = [f"model.path={model}", "workload=jsonl", f"workload.path={path}", f"scheduler.chunk_size={args.chunk}",
              f"scheduler.token_budget={args.chunk}", "cache.memory_gib=1", "tracer.timeline=false"]
    rows = []
    for stages, extra, label in ((1, [], "1 stage"),
                                 (2, ["scheduler.max_chunks_in_flight=1"], "2 stages, 1 chunk in flight"),
                                 (2, [], "2 stages, chunks pipelined")):
        m = run_torchrun(stages, [*common, *extra], out / label.replace(" ", "_").replace(",", ""))
        rows.append((label, m["mean_ttft_ms"] / 1e3, m.get("bubble_fraction", {})))
    base = rows[0][1]
    print(f"\nCPU, {machine()}; one {args.prompt_len}-token prompt, chunk {args.chunk}, random Llama 512x8\n")
    print("| run | TTFT s | vs 1 stage | bubble per stage |\n|---|---|---|---|")
    for label, ttft, bubbles in rows:
        b = ", ".join(f"{float(v):.0%}" for v in bubbles.values())
        print(f"| {label} | {ttft:.2f} | {ttft / base:.2f}x | {b} |")


def _sim(overrides: list[str], requests: list[dict], tmp: Path):
    from pp_runtime.trace.bubbles import compute_bubbles

    path = _write(tmp / f"w{abs(hash(tuple(overrides))) % 10**8}.jsonl", requests)
    res = _sim_cfg(["workload=jsonl", f"workload.path={path}", *overrides])
    bubbles = compute_bubbles(res.events)
    return res, [b["bubble_fraction"] for b in bubbles["stages"].values()]


def sim(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_long_sim_"))
    print("\npp-sim, Llama-3.1-8B shape, roofline H100 (sim.gpu=h100), free planner, one prompt, 1 output token\n")
    print("| prompt | chunk | stages | TTFT ms | vs 1 stage | strong-scaling eff. (SGLang 82.8%) | worst stage bubble |"
          " TTFT ms, 1 chunk in flight |")
    print("|---|---|---|---|---|---|---|---|")
    for plen, chunks, stage_list in ((4000, (512,), (1, 2, 4)), (32768, (512, 1024, 2048), (1, 2, 4, 8)),
                                     (131000, (2048,), (1, 8))):
        req = [{"id": "long", "prompt_token_ids": _prompt(plen, 3), "max_tokens": 1, "ignore_eos": True}]
        for chunk in chunks:
            base = None
            for s in stage_list:
                common = [f"pipeline.stages={s}", f"scheduler.chunk_size={chunk}", f"scheduler.token_budget={chunk}"]
                res, bub = _sim(common, req, tmp)
                serial, _ = _sim([*common, "scheduler.max_chunks_in_flight=1"], req, tmp)
                ttft = res.seqs[0].first_token_s * 1e3
                base = base or ttft
                eff = base / (s * ttft)
                print(f"| {plen} | {chunk} | {s} | {ttft:.1f} | {ttft / base:.3f}x | {eff:.1%} | {max(bub):.1%} | "
                      f"{serial.seqs[0].first_token_s * 1e3:.1f} |")


def _mix(long_len: int = 4000, short_len: int = 64, num_short: int = 16) -> list[dict]:
    reqs = [{"id": "long", "prompt_token_ids": _prompt(long_len, 1), "max_tokens": 16, "ignore_eos": True}]
    reqs += [{"id": f"s{i}", "prompt_token_ids": _prompt(short_len, 10 + i), "max_tokens": 16, "ignore_eos": True}
             for i in range(num_short)]
    return reqs


def _short_decodes(seqs) -> tuple[float, float, float]:
    """(largest, median) gap between consecutive tokens and the end-to-end latency p50 of the short requests."""
    shorts = [q for q in seqs if q.request.id != "long"]
    gaps = sorted(b - a for q in shorts for a, b in zip(q.token_times_s, q.token_times_s[1:]))
    e2e = sorted(q.finish_s - q.request.arrival_s for q in shorts)
    return gaps[-1], gaps[len(gaps) // 2], e2e[len(e2e) // 2]


def _p50_short(ttft: dict[str, float]) -> float:
    shorts = sorted(v for k, v in ttft.items() if k != "long")
    return shorts[len(shorts) // 2]


def _fair_row(label, ttft: dict[str, float], alone: dict[str, float], m: dict) -> str:
    p50 = _p50_short(ttft)
    s = m.get("slowdown") or {}
    jain = s.get("jain_ttft")
    return (f"| {label} | {p50 * 1e3:.1f} | {p50 / alone['short']:.2f}x | {ttft['long'] * 1e3:.1f} | "
            f"{ttft['long'] / alone['long']:.3f}x | {'' if jain is None else f'{jain:.3f}'} | "
            f"{m['total_token_throughput']:.0f} |")


def fairness(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_fair_"))
    header = ("| run | short TTFT p50 ms | vs short alone | long TTFT ms | vs long alone | Jain (TTFT slowdown) |"
              " tokens/s in+out |\n|---|---|---|---|---|---|---|")
    mix = _mix()
    print("\npp-sim, Llama-3.1-8B shape, roofline H100, cache.memory_gib=20: 1 x 4000 + 16 x 64 tokens at t=0, "
          "16 output tokens each\n")
    print(header)
    decodes = {}
    for s in (1, 2):
        common = [f"pipeline.stages={s}", "cache.memory_gib=20", "scheduler.chunk_size=512",
                  "scheduler.token_budget=512"]
        shorts = _sim(common, mix[1:], tmp)[0]
        alone = {"long": _sim(common, mix[:1], tmp)[0].seqs[0].first_token_s,
                 "short": _p50_short({q.request.id: q.first_token_s for q in shorts.seqs})}
        for order in ("fcfs", "fair", "deadline"):
            res, _ = _sim([*common, f"scheduler.prefill_order={order}"], mix, tmp)
            ttft = {q.request.id: q.first_token_s - q.request.arrival_s for q in res.seqs}
            print(_fair_row(f"{s} stage(s), {order}", ttft, alone, res.metrics))
            decodes[f"{s} stage(s), {order}"] = _short_decodes(res.seqs)
        # The same order with the short prompts stopping at their first token: no decodes ride along the long
        # prompt's chunks, so its TTFT is the floor that sharing the prefill alone costs.
        floor = [mix[0], *({**r, "max_tokens": 1} for r in mix[1:])]
        for order in ("fair", "deadline"):
            res, _ = _sim([*common, f"scheduler.prefill_order={order}"], floor, tmp)
            ttft = {q.request.id: q.first_token_s - q.request.arrival_s for q in res.seqs}
            print(_fair_row(f"{s} stage(s), {order}, short prompts with 1 output token", ttft, alone, res.metrics))
        batch = [{**r, "id": f"{r['id']}-{k}"} for k in range(4) for r in mix]
        tput = {o: _sim([*common, f"scheduler.prefill_order={o}"], batch, tmp)[0].metrics["total_token_throughput"]
                for o in ("fcfs", "fair", "deadline")}
        print(f"| {s} stage(s), offline batch of {len(batch)} (4 x the mix) | | | | | | fair / fcfs throughput "
              f"{tput['fair'] / tput['fcfs']:.3f}, deadline / fcfs {tput['deadline'] / tput['fcfs']:.3f} |")
    print("\nThe short requests' decodes in the mix: largest and median gap between tokens, end-to-end latency p50\n")
    print("| run | short TBT max ms | short TBT p50 ms | short e2e p50 ms |\n|---|---|---|---|")
    for label, (tbt_max, tbt_p50, e2e_p50) in decodes.items():
        print(f"| {label} | {tbt_max * 1e3:.1f} | {tbt_p50 * 1e3:.1f} | {e2e_p50 * 1e3:.1f} |")
    if not args.cpu:
        return
    out = Path(args.out or tmp)
    model = _cpu_model(out)
    print(f"\nCPU, {machine()}: random Llama 512x8, the same mix with 8 output tokens, chunk 256\n")
    print(header)
    for s in (1, 2):
        common = [f"model.path={model}", "workload=jsonl", "scheduler.chunk_size=256", "scheduler.token_budget=256",
                  "cache.memory_gib=1", "tracer.timeline=false"]
        mix = [{**r, "max_tokens": 8} for r in _mix()]
        alone = {}
        for name, reqs in (("long", mix[:1]), ("short", mix[1:])):
            run_dir = out / f"{s}_{name}"
            run_torchrun(s, [*common, f"workload.path={_write(out / f'{name}.jsonl', reqs)}"], run_dir)
            alone[name] = _p50_short(_ttfts(run_dir)) if name == "short" else _ttfts(run_dir)["long"]
        for order in ("fcfs", "fair", "deadline"):
            run_dir = out / f"{s}_{order}"
            m = run_torchrun(s, [*common, f"workload.path={_write(out / 'mix.jsonl', mix)}",
                                 f"scheduler.prefill_order={order}"], run_dir)
            print(_fair_row(f"{s} stage(s), {order}", _ttfts(run_dir), alone, m))


def orders(args) -> None:
    from pp_runtime.config import ConfigError
    from pp_runtime.request import RequestError
    from scripts.bench_policies import trace_files

    traces = trace_files()
    print("\npp-sim, Llama-3.1-8B shape, roofline H100, cache.memory_gib=20, free planner; 256 requests of each "
          "trace at full length, Poisson arrivals at 20/s\n")
    print("| trace | stages | order | tokens/s in+out | vs fair | TTFT p50 ms | TTFT p99 ms | ITL p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for trace in traces:
        try:
            _orders_rows(trace)
        except (ConfigError, RequestError) as exc:  # a CSV in the folder that is not a trace of lengths
            print(f"| {trace.stem} | | | skipped: {exc} | | | | |")


def _orders_rows(trace: Path) -> None:
    for s in (1, 2):
        fair = None
        for order in ("fair", "deadline", "fcfs"):
            m = _sim_cfg(["workload=trace", f"workload.path={trace}", "workload.num_requests=256",
                          "workload.length_scale=1", "workload.rate=20", f"pipeline.stages={s}", "cache.memory_gib=20",
                          f"scheduler.prefill_order={order}"]).metrics
            fair = fair or m["total_token_throughput"]
            print(f"| {trace.stem} | {s} | {order} | {m['total_token_throughput']:.0f} | "
                  f"{m['total_token_throughput'] / fair:.3f} | {m['median_ttft_ms']:.0f} | "
                  f"{m['p99_ttft_ms']:.0f} | {m['p99_itl_ms']:.1f} |")


def _sim_cfg(overrides: list[str]):
    """pp-sim of ``overrides`` on the Llama-3.1-8B shape, roofline H100, free planner: the SimResult."""
    from pp_runtime.sim.sim_job import resolve_sim_job
    from tests.jobs import make_config

    return resolve_sim_job(make_config(["sim.model_shape=llama-3.1-8b", "sim.cost_model=roofline", "sim.gpu=h100",
                                        "sim.planner_time_us=0", *overrides])).run()


def _ttfts(run_dir: Path) -> dict[str, float]:
    return {r["id"]: r["ttft_s"] for r in map(json.loads, (run_dir / "outputs.jsonl").read_text().splitlines())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=("cpu", "sim", "fairness", "orders"))
    ap.add_argument("--prompt-len", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--cpu", action="store_true", help="fairness: also run the mix for real on the CPU")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    {"cpu": cpu, "sim": sim, "fairness": fairness, "orders": orders}[args.study](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
