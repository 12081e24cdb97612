"""Write a simulated run into a directory with the same files as a real run, so pp-report reads both alike."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pp_runtime.rundir.metrics import request_record
from pp_runtime.sim.pipeline import SimResult
from pp_runtime.trace.reports import bubble_metrics, write_json, write_reports


def write_sim_run(out_dir: str | Path, result: SimResult, cfg, *, tokenizer=None, info: dict | None = None) -> dict:
    """Write outputs.jsonl, metrics.json, events.npz, trace.json, bubbles.json and timeline.png into ``out_dir``.

    outputs.jsonl lists requests in the order they finished, as a real run streams them. metrics.json holds the
    simulated metrics, the bubble figures a real run adds, the config, and ``info`` under ``"sim"`` (links, time
    model). Returns the bubbles dict.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(result.seqs, key=lambda s: (s.finish_s if s.finish_s is not None else float("inf"), s.seq_id))
    with open(out / "outputs.jsonl", "w") as f:
        for seq in order:
            text = tokenizer.decode(seq.output_token_ids, skip_special_tokens=True) if tokenizer is not None else None
            f.write(json.dumps(request_record(seq, text)) + "\n")
    bubbles = write_reports(str(out), result.events, policy=cfg.scheduler.policy,
                            clock_errors_ns=dict.fromkeys(result.events, 0), timeline=cfg.tracer.timeline)
    metrics = dict(result.metrics)
    metrics.update(bubble_metrics(bubbles))
    metrics["sim"] = info or {}
    metrics["config"] = asdict(cfg)
    write_json(out / "metrics.json", metrics, default=str)
    return bubbles
