"""``pp-tune --tbt-slo-ms 50 [--ttft-slo-ms 2000] [overrides]``: pick budget, chunk, depth and split by simulation.

The overrides are a job's (``workload=...``, ``pipeline.stages=N``, ``sim.cost_model=roofline`` ...). Every
candidate of a small grid (``pp_runtime.sim.tuning``) runs through ``pp_runtime.sim.simulate`` on the workload
(or ``--sample`` requests of it) with a constant planner time (``sim.planner_time_us``, 200 us unless set),
so that simulations are fast and repeatable. The default stays the winner when it meets the SLO and nothing is
``--min-gain`` (5%) faster: a smaller predicted gain is inside the simulator's error. Layer splits: the job's
(``pipeline.layers_per_stage`` or the head-share heuristic), and with a per-layer time model (layer_profile,
roofline) the split that minimises the bottleneck stage over the workload's planned micro-batches
(``pp_runtime.model.partition.choose_split``).

Prints the Pareto frontier (throughput vs p99 TBT) and writes the winner to ``<out>/tune/<name>.yaml``, a
Hydra config-group file of package ``_global_``. A job loads it with
``torchrun ... -m launch.run hydra.searchpath=[file://<abs out>] +tune=<name> <the same workload overrides>``.
Exit code: 0 with a winner, 1 when no candidate meets the SLO, 2 for a config error.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

from pp_runtime.config import ConfigError
from pp_runtime.planner.budget import budget_bound
from pp_runtime.sim.tuning import Candidate, TuneError, TuneResult, candidates, frontier_table, search

PLANNER_TIME_US = 200.0


def main(argv: list[str] | None = None) -> int:
    """Run pp-tune on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = argparse.ArgumentParser(prog="pp-tune", description="Search token budget, chunk size, micro-batches "
                                     "in flight and layer split by simulation, under a p99 TBT SLO.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the job to tune (workload, stages, sim)")
    parser.add_argument("--tbt-slo-ms", type=float, required=True, help="p99 time between tokens to meet, ms")
    parser.add_argument("--ttft-slo-ms", type=float, help="p99 time to first token to meet, ms (optional)")
    parser.add_argument("--max-sims", type=int, default=60, help="most simulations to run")
    parser.add_argument("--min-gain", type=float, default=0.05,
                        help="keep the default (when it meets the SLO) unless the pick is this much faster (0.05: 5%%)")
    parser.add_argument("--sample", type=int, help="simulate this many requests of the workload (default: all)")
    parser.add_argument("--out", default="tune_out", help="folder for tune/<name>.yaml and frontier.txt")
    parser.add_argument("--name", default="best", help="name of the override file (loaded as +tune=<name>)")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides)
        if cfg.sim.cost_model == "layer_profile" and not cfg.sim.layer_profile_path:
            cfg.sim.layer_profile_path = str(profile_job_model(cfg, Path(args.out)))
        result = tune(cfg, tbt_slo_ms=args.tbt_slo_ms, ttft_slo_ms=args.ttft_slo_ms, max_sims=args.max_sims,
                      sample=args.sample, min_gain=args.min_gain)
    except ConfigError as exc:
        print(f"pp-tune: {exc}", file=sys.stderr)
        return 2
    except TuneError as exc:
        print(f"pp-tune: {exc}", file=sys.stderr)
        return 1
    table = frontier_table(result)
    print(f"pp-tune: {len(result.trials)} simulation(s); frontier (throughput vs p99 TBT):\n{table}")
    path = write_override_file(result.winner.candidate, Path(args.out), args.name, split_lm_head=_simulated_split(cfg))
    (Path(args.out) / "frontier.txt").write_text(table + "\n")
    print(f"winner: {result.winner.candidate} -> {path}\nload it with: hydra.searchpath=[file://"
          f"{Path(args.out).resolve()}] +tune={args.name}")
    return 0


def compose(overrides: list[str]):
    """The job's config from Hydra overrides, composed as launch.run does (raises ConfigError)."""
    from pp_runtime.config import compose_config

    return compose_config(overrides)


def profile_job_model(cfg, out: Path) -> Path:
    """A per-layer profile of the job's own model (``model.path``, or ``sim.model_shape``) on this machine's device,
    written to ``<out>/layer_profile.json``: taken once (``scripts.profile_layers``, a few seconds to a minute),
    then reused from the cost-model cache (``pp_runtime.model.cost_cache``) for the same model, device, dtype,
    backend and budget."""
    import shutil

    import torch
    from transformers import AutoConfig

    from pp_runtime.model import cost_cache
    from pp_runtime.model.source import model_dir
    from pp_runtime.sim.layer_profile import LayerProfile, LayerProfileError
    from scripts.profile_layers import take_profile
    from stages import attention
    from stages.profiler import stage_code_digest

    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    max_context_len = min(cfg.model.max_model_len or 2048, 2048)
    if cfg.sim.model_shape:
        from pp_runtime.sim.hardware import MODEL_SHAPES

        if cfg.sim.model_shape not in MODEL_SHAPES:
            raise ConfigError(f"sim.model_shape={cfg.sim.model_shape!r} is not a preset; use one of "
                              f"{', '.join(MODEL_SHAPES)}, or null for the job's model")
        name = cfg.sim.model_shape
        hf_config = MODEL_SHAPES[name].to_hf_config(num_layers=1, max_position_embeddings=max_context_len)
    else:
        name = model_dir(cfg.model.path)
        hf_config = AutoConfig.from_pretrained(name)
        hf_config.num_hidden_layers = 1
    # The grid's largest budget: powers of two around the job's (auto: around its largest possible value).
    budget = 2 * budget_bound(cfg.scheduler)
    backend = attention.choose_backend(cfg.model.attention, device, cfg.cache.block_size, dtype=dtype)
    key = {"kind": "layer_profile", **cost_cache.cost_model_key(
        model_dir=name, layers_per_stage=[1],
        device=cost_cache.device_name(device), dtype=str(dtype).removeprefix("torch."), backend=backend,
        threads=torch.get_num_threads(), token_budget=budget, max_context_len=max_context_len,
        stage_code=stage_code_digest())}
    cached = cost_cache.entry_path(key)
    try:
        if LayerProfile.from_json(cached).meta.get("cache_key") != key:
            raise LayerProfileError("another key")
        print(f"pp-tune: layer profile of {name} from the cache ({cached})", file=sys.stderr)
    except LayerProfileError:
        print(f"pp-tune: profiling one layer of {name} on the {device.type} (once; then cached)", file=sys.stderr)
        profile = take_profile(hf_config, device=device, dtype=dtype, token_budget=budget,
                               max_context_len=max_context_len, repeats=2)
        profile.meta.update(shape=name, cache_key=key)
        cached.parent.mkdir(parents=True, exist_ok=True)
        profile.to_json(cached)
    path = out / "layer_profile.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, path)
    return path


def tune(cfg, *, tbt_slo_ms: float, ttft_slo_ms: float | None = None, max_sims: int = 60, sample: int | None = None,
         min_gain: float = 0.0, simulate=None) -> TuneResult:
    """Search by simulation (``simulate`` defaults to ``pp_runtime.sim.simulate``; tests inject a stand-in)."""
    from pp_runtime.model.partition import choose_split, head_cost_layers, sampled_share
    from pp_runtime.planner import needs_cost_model
    from pp_runtime.planner.budget import describe, is_auto, resolve_token_budget
    from pp_runtime.sim import fit_cost_model
    from pp_runtime.sim.parts import total_parts
    from pp_runtime.sim.sim_job import resolve_sim_job
    from pp_runtime.sim.time_model import part_source

    if cfg.pipeline.stages is None:
        raise ConfigError("pp-tune needs pipeline.stages=N (the number of stages to tune for)")
    if cfg.sim.planner_time_us is None:
        cfg.sim.planner_time_us = PLANNER_TIME_US
    job = resolve_sim_job(cfg)
    if is_auto(cfg.scheduler):  # the grid centres on the budget a run would choose: the time model's knee
        model = None
        if needs_cost_model(cfg.scheduler):
            model = fit_cost_model(job.time_model, token_budget=budget_bound(cfg.scheduler),
                                   max_context_len=job.max_model_len)
        scheduler, choice = resolve_token_budget(cfg.scheduler, model)
        print(f"pp-tune: {describe(choice)}", file=sys.stderr)
        cfg.scheduler.token_budget = scheduler.token_budget
    requests = job.requests
    if sample is not None and sample < len(requests):
        requests = sorted(random.Random(cfg.workload.seed).sample(requests, sample), key=lambda r: r.arrival_s)
    num_layers, stages = job.hf_config.num_hidden_layers, cfg.pipeline.stages
    head_cost = head_cost_layers(job.hf_config, sampled_share(requests))
    splits = [tuple(len(r) for r in job.layer_ranges)]  # the job's: pipeline.layers_per_stage or the heuristic
    splits.append(tuple(len(r) for r in choose_split(num_layers, stages, head_cost=head_cost)[0]))
    source = part_source(cfg, hf_config=job.hf_config)
    if source is not None:
        mix = planned_pieces(job, requests)
        timed, rule = choose_split(num_layers, stages, head_cost=head_cost, parts=total_parts(source, mix))
        if rule == "time":
            splits.append(tuple(len(r) for r in timed))
    grid = candidates(token_budget=cfg.scheduler.token_budget, chunk_size=cfg.scheduler.chunk_size,
                      num_microbatches=cfg.pipeline.depth, num_stages=stages, splits=list(dict.fromkeys(splits)))
    run = simulate or _simulate()
    start = time.monotonic()
    result = search(lambda cand: simulate_candidate(job, cand, requests, simulate=run), grid,
                    tbt_slo_ms=tbt_slo_ms, ttft_slo_ms=ttft_slo_ms, max_sims=max_sims, min_gain=min_gain)
    print(f"pp-tune: {len(result.trials)} of {len(grid)} candidates simulated in {time.monotonic() - start:.1f}s",
          file=sys.stderr)
    return result


def simulate_candidate(job, cand: Candidate, requests, *, simulate) -> dict:
    """Metrics of one simulated run of ``cand`` on ``requests`` (``job``: a ``resolve_sim_job`` result)."""
    from pp_runtime.model.cache_size import resolve_num_blocks
    from pp_runtime.model.partition import partition_layers, resolve_head_split
    from pp_runtime.sim.time_model import build_time_model

    c = apply(job.cfg, cand)
    ranges = partition_layers(job.hf_config.num_hidden_layers, len(cand.layers_per_stage),
                              layers_per_stage=list(cand.layers_per_stage))
    head_split = resolve_head_split(c.pipeline.split_lm_head, vocab_size=job.hf_config.vocab_size,
                                    num_stages=len(ranges), cpu=job.device_memory_gib is None)
    time_model = build_time_model(c, hf_config=job.hf_config, layer_ranges=ranges, head_split=head_split)
    num_blocks = resolve_num_blocks(c.cache, hf_config=job.hf_config, layer_ranges=ranges,
                                    token_budget=c.scheduler.token_budget, dtype=job.dtype,
                                    device_memory_gib=job.device_memory_gib, split_head=head_split is not None)
    result = simulate(c, requests, time_model=time_model, links=job.links, hidden_size=job.hf_config.hidden_size,
                      dtype_bytes=job.dtype_bytes, eos_token_ids=job.eos_token_ids, max_model_len=job.max_model_len,
                      num_blocks=num_blocks)
    return result.metrics


def apply(cfg, cand: Candidate):
    """A copy of ``cfg`` with the candidate's values set (and validated)."""
    c = copy.deepcopy(cfg)
    for group, values in cand.overrides().items():
        for key, value in values.items():
            setattr(getattr(c, group), key, value)
    c.validate()
    return c


def planned_pieces(job, requests) -> list[tuple]:
    """The micro-batches (their pieces) the job's planner makes of ``requests``, driven in virtual time."""
    from pp_runtime.planner import make_planner
    from pp_runtime.planner.loop import drive
    from pp_runtime.sim import fit_cost_model

    cfg = job.cfg
    model = fit_cost_model(job.time_model, token_budget=cfg.scheduler.token_budget,
                           max_context_len=job.max_model_len)
    planner = make_planner(cfg.scheduler, num_blocks=job.num_blocks, block_size=cfg.cache.block_size,
                           num_slots=cfg.pipeline.depth, max_model_len=job.max_model_len, cost_model=model)
    for req in requests:
        planner.add_request(req)
    mbs: list[tuple] = []
    drive(planner, lambda piece: -1, on_schedule=lambda mb: mbs.append(mb.pieces))
    return mbs


def write_override_file(cand: Candidate, out: Path, name: str, *, split_lm_head: bool | None = None) -> Path:
    """Write ``cand`` as ``<out>/tune/<name>.yaml`` (a ``_global_`` Hydra config-group file); ``split_lm_head``: whether
    the simulations split the LM head, recorded so that the run uses the layout that was simulated."""
    lines = ["# @package _global_", f"# Written by pp-tune: load with hydra.searchpath=[file://{out.resolve()}] "
             f"+tune={name}"]
    for group, values in cand.overrides().items():
        if group == "pipeline" and split_lm_head is not None:
            values = {**values, "split_lm_head": str(split_lm_head).lower()}
        lines.append(f"{group}:")
        lines += [f"  {key}: {value}" for key, value in values.items()]
    path = out / "tune" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _simulated_split(cfg) -> bool:
    """Whether the simulations of ``cfg`` split the LM head (``pipeline.split_lm_head``, auto: when they simulate CPU
    stages)."""
    from pp_runtime.model.partition import splits_head
    from pp_runtime.sim.sim_job import simulates_cpu

    return splits_head(cfg.pipeline.split_lm_head, num_stages=cfg.pipeline.stages, cpu=simulates_cpu(cfg))


def _simulate():
    try:
        from pp_runtime.sim import simulate
    except ImportError as exc:
        raise ConfigError(f"pp-tune needs the simulator (pp_runtime.sim.simulate): {exc}") from None
    return simulate


if __name__ == "__main__":
    sys.exit(main())
