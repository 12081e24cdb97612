"""Rank 0's job: queue the requests, run the engine, stream outputs.jsonl, then metrics and bubble reports."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from pp_runtime.job import RankJob
from pp_runtime.model.cache_size import cache_size_keys
from pp_runtime.planner import make_planner
from pp_runtime.planner.budget import describe, resolve_token_budget
from pp_runtime.request import with_run_seed
from pp_runtime.rundir.metrics import compute_metrics, request_record
from pp_runtime.rundir.outputs_file import OUTPUTS_FILE, check_ids, describe_ids_problem, output_line, scan_outputs
from pp_runtime.rundir.run_state import end_attempt
from stages.engine import Engine

log = logging.getLogger("pp_runtime")


def serve_requests(job: RankJob, executor, transport, tracer, faults, *, cost_model=None, stop=None) -> dict:
    """Serve the requests that outputs.jsonl does not hold yet (``begin_attempt`` has run), appending each as it
    finishes.

    Returns this attempt's metrics (plus totals over the whole file and the ids check), the sequences, and
    ``stopped``: why the job stopped early (a signal), or None when it ran to the end.
    """
    cfg = job.cfg
    out_dir = Path(cfg.output_dir)
    done = job.resume.done
    seed = job.resume.state["sampling_seed"]
    attempt = job.resume.state["attempt"]
    todo = [with_run_seed(r, seed) for r in job.requests if r.id not in done]
    # scheduler.token_budget=auto becomes a number here, once; the other stages sized their buffers for its bound.
    scheduler, budget_choice = resolve_token_budget(cfg.scheduler, cost_model)
    log.info("%s", describe(budget_choice))
    planner = make_planner(scheduler, num_blocks=job.num_blocks, block_size=cfg.cache.block_size,
                           num_slots=cfg.pipeline.depth, max_model_len=job.max_model_len,
                           eos_token_ids=job.eos_token_ids, cost_model=cost_model,
                           cache_keys=cache_size_keys(cfg.cache, job.device_memory_gib))
    # sarathi and throttle: the chunks of one prompt in flight, as the planner holds it (null: the depth; at most it).
    chunks_in_flight = getattr(planner, "max_chunks_in_flight", None)
    asked = cfg.scheduler.max_chunks_in_flight
    if chunks_in_flight is not None and asked is not None and asked > chunks_in_flight:
        log.info("scheduler.max_chunks_in_flight=%d is above the pipeline depth: capped at %d, the micro-batches in "
                 "flight (pipeline.num_microbatches, default pipeline.stages)", asked, chunks_in_flight)
    tok = job.tokenizer
    model_name = os.path.basename(os.path.normpath(job.model_dir))  # Batch API lines without a body "model"
    # What a request would take alone, by the cost model: its outputs.jsonl line and metrics.json's slowdown share it.
    alone = planner.alone_times if cost_model else None
    progress = _progress(len(todo), cfg.runtime.progress)
    finished = 0
    faults.on_requests_finished(finished)
    with open(out_dir / OUTPUTS_FILE, "a") as outputs:
        def on_finish(seq):
            nonlocal finished
            text = tok.decode(seq.output_token_ids, skip_special_tokens=True) if tok is not None else None
            # attempt: pp-sim --replay tells attempts apart
            record = dict(request_record(seq, text, alone=alone), attempt=attempt)
            line = output_line(record, seq.request, model=model_name, created=int(time.time()))
            outputs.write(json.dumps(line) + "\n")  # one write: a kill tears at most this line
            outputs.flush()
            if seq.error:
                log.error("%s", seq.error)
            progress.update(1)
            finished += 1
            faults.on_requests_finished(finished)

        for req in todo:
            seq = planner.add_request(req)
            if seq.finish_reason == "rejected":
                on_finish(seq)
        engine = Engine(planner, executor, transport, tracer, depth=cfg.pipeline.depth, faults=faults,
                        on_finish=on_finish, stop=stop, drain_timeout_s=cfg.runtime.drain_timeout_s)
        wall_s = engine.run()
    progress.close()
    metrics = compute_metrics(planner.seqs, wall_s=wall_s, alone=alone)
    metrics["policy"] = cfg.scheduler.policy
    metrics["stages"] = job.world_size
    metrics["token_budget"] = budget_choice
    # pipeline.split_lm_head as resolved: the last stage's first token id (v0), or null with the head whole.
    metrics["lm_head_split"] = job.head_split if job.world_size > 1 else None
    # No request lost: read the file back and hold every input id against it.
    scan = scan_outputs(out_dir / OUTPUTS_FILE)
    check = check_ids([r.id for r in job.requests], scan.ids)
    metrics.update(attempt=attempt, sampling_seed=seed, resumed=len(job.requests) - len(todo),
                   unfinished=sum(s.finish_reason is None for s in planner.seqs),
                   totals=dict(scan.totals, input_requests=len(job.requests)), ids_check=check,
                   launch_dir=os.getcwd())  # what the config's relative paths are relative to (pp-sim --replay)
    stopped = None
    if engine.stopped_early:
        stopped = (f"stopped by {stop.name}: {len(scan.ids)} of {len(job.requests)} requests are in "
                   f"{out_dir / OUTPUTS_FILE}; rerun the same command to resume")
    return {"metrics": metrics, "seqs": planner.seqs, "stopped": stopped, "cost_model": cost_model,
            "mb_work": planner.mb_work, "max_chunks_in_flight": chunks_in_flight}


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="req", desc="requests", disable=not (enabled and sys.stderr.isatty()))


def finish_reports(job: RankJob, result: dict, events: dict, clock_errors: dict) -> None:
    """Write bubble reports and metrics.json into the run directory, record the attempt's end, print the summary.

    Raises RuntimeError when a job that ran to the end fails the ids check (a request missing or repeated in
    outputs.jsonl): a lost request is never silent.
    """
    from dataclasses import asdict

    from pp_runtime.trace.reports import format_bubble_report, write_json

    cfg = job.cfg
    out_dir = Path(cfg.output_dir)
    metrics = result["metrics"]
    check = metrics["ids_check"]
    status = metrics["status"] = "preempted" if result["stopped"] else "complete" if check["ok"] else "incomplete"
    if not result["seqs"] and status == "complete" and (out_dir / "metrics.json").exists():
        print(f"nothing left to do: {metrics['resumed']} request(s) already in {out_dir / OUTPUTS_FILE}; "
              f"metrics.json and the reports are those of the attempt that finished them")
        return _end_attempt(job, out_dir, status, result["stopped"], check)
    if cfg.tracer.enabled:
        from pp_runtime.trace.reports import bubble_metrics, write_reports

        bubbles = write_reports(str(out_dir), events, policy=cfg.scheduler.policy, clock_errors_ns=clock_errors,
                                timeline=cfg.tracer.timeline)
        metrics.update(bubble_metrics(bubbles))
        if result.get("cost_model") is not None:
            from pp_runtime.planner.cost_model import prediction_error

            metrics["cost_model_error"] = prediction_error(result["cost_model"], result["mb_work"], events)
        metrics["clock_error_us"] = {str(s): e / 1e3 for s, e in clock_errors.items()}
    metrics["config"] = asdict(cfg)
    # Resolved, as scheduler.prefill_order is: the value the planner used (null only where the policy ignores it).
    metrics["config"]["scheduler"]["max_chunks_in_flight"] = result["max_chunks_in_flight"]
    write_json(out_dir / "metrics.json", metrics, default=str)
    if cfg.workload.kind == "default":
        print_answers(result["seqs"], job.tokenizer)
    print(f"\n{metrics['completed']}/{metrics['num_requests']} requests, {metrics['total_output_tokens']} output "
          f"tokens in {metrics['duration_s']:.2f}s ({metrics['output_throughput']:.1f} tok/s); "
          f"outputs in {out_dir / 'outputs.jsonl'}")
    if metrics["resumed"] or status != "complete":
        print(f"{status}: {metrics['resumed']} request(s) resumed from earlier attempts; "
              f"{metrics['totals']['requests']}/{len(job.requests)} in outputs.jsonl")
    if cfg.tracer.enabled:
        print(format_bubble_report(bubbles, title=f"{cfg.scheduler.policy}, {job.world_size} stage(s)",
                                   slowdown=metrics.get("slowdown")))
        if job.world_size > 1:
            print(f"stage clocks aligned to stage 0 within {max(clock_errors.values()) / 1e3:.1f} us "
                  f"(half the best ping-pong round trip); trace in {out_dir / 'trace.json'}")
    _end_attempt(job, out_dir, status, result["stopped"], check)


def _end_attempt(job, out_dir: Path, status: str, stopped: str | None, check: dict) -> None:
    end_attempt(out_dir, job.resume, status=status, note=stopped or describe_ids_problem(check))
    if status == "incomplete":
        log.error("ids check failed: %s", describe_ids_problem(check))
        raise RuntimeError(f"outputs.jsonl fails the ids check: {describe_ids_problem(check)} (details in "
                           f"metrics.json 'ids_check'); rerun to complete missing requests, or remove repeated lines")


def print_answers(seqs, tokenizer, file=sys.stdout) -> None:
    for seq in seqs:
        req = seq.request
        prompt = req.prompt if req.prompt is not None else f"<{seq.prompt_len} tokens>"
        answer = tokenizer.decode(seq.output_token_ids, skip_special_tokens=True) if tokenizer else \
            str(seq.output_token_ids)
        print(f"\n[{req.id}] {prompt}\n=> {answer.strip() if seq.error is None else 'ERROR: ' + seq.error}",
              file=file)
