"""Write a simulated run into a directory with the same files as a real run, so pp-report reads both alike."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pp_runtime.config import ConfigError
from pp_runtime.rundir.metrics import request_record
from pp_runtime.rundir.outputs_file import OUTPUTS_FILE
from pp_runtime.rundir.run_state import MARKER_FILE, STATE_FILE
from pp_runtime.sim.pipeline import SimResult
from pp_runtime.trace.reports import bubble_metrics, write_json, write_reports


def check_sim_out_dir(out_dir: str | Path, *, key: str = "hydra.run.dir") -> None:
    """Refuse ``out_dir`` if it holds a real run's files, which a simulation would overwrite.

    A real run (pp-run / torchrun) leaves ``run_state.json``, ``INCOMPLETE`` or ``cost_model.json``, and an
    ``outputs.jsonl`` or ``metrics.json`` whose metrics.json has no ``"sim"`` section. An earlier simulation's
    files may be overwritten: a simulation has nothing to resume and runs again in seconds. Raises ConfigError
    naming ``key`` (the setting that chose the directory).
    """
    out = Path(out_dir)
    real = [name for name in (STATE_FILE, MARKER_FILE, "cost_model.json") if (out / name).exists()]
    try:
        simulated = "sim" in json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError, TypeError):
        simulated = False
    if not simulated:
        real += [name for name in (OUTPUTS_FILE, "metrics.json") if (out / name).exists()]
    if real:
        raise ConfigError(f"{key}={str(out_dir)!r} holds a real run's files ({', '.join(real)}), which pp-sim would "
                          f"overwrite; choose another {key} (pp-sim overwrites only its own earlier simulation)")


def write_sim_run(out_dir: str | Path, result: SimResult, cfg, *, tokenizer=None, info: dict | None = None,
                  key: str = "hydra.run.dir") -> dict:
    """Write outputs.jsonl, metrics.json, events.npz, trace.json, bubbles.json and timeline.png into ``out_dir``.

    outputs.jsonl lists requests in the order they finished, as a real run streams them. metrics.json holds the
    simulated metrics, the bubble figures a real run adds, the config, and ``info`` under ``"sim"`` (links, time
    model). Returns the bubbles dict. Raises ConfigError, before writing anything, if ``out_dir`` holds a real
    run's files (``check_sim_out_dir``; ``key`` names the setting that chose ``out_dir``).
    """
    check_sim_out_dir(out_dir, key=key)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(result.seqs, key=lambda s: (s.finish_s if s.finish_s is not None else float("inf"), s.seq_id))
    with open(out / "outputs.jsonl", "w") as f:
        for seq in order:
            text = tokenizer.decode(seq.output_token_ids, skip_special_tokens=True) if tokenizer is not None else None
            f.write(json.dumps(request_record(seq, text, alone=result.alone)) + "\n")
    bubbles = write_reports(str(out), result.events, policy=cfg.scheduler.policy,
                            clock_errors_ns=dict.fromkeys(result.events, 0), timeline=cfg.tracer.timeline)
    metrics = dict(result.metrics)
    metrics.update(bubble_metrics(bubbles))
    metrics["sim"] = info or {}
    metrics["config"] = asdict(cfg)
    # Resolved, as a real run stores it (and scheduler.prefill_order): the value the planner used.
    metrics["config"]["scheduler"]["max_chunks_in_flight"] = result.max_chunks_in_flight
    write_json(out / "metrics.json", metrics, default=str)
    return bubbles
