"""Re-simulate a recorded run: its resolved config, workload, fitted cost model and sampled tokens.

The run directory gives the config (metrics.json's "config", else .hydra/config.yaml), the cost model fitted at
the start of the run (cost_model.json, else the file its scheduler.cost_model_path names) and each request's
output token ids (outputs.jsonl), which the replay samples so that every request finishes where it did.
A resumed run directory holds several attempts; its events and metrics.json are the last attempt's, so the
replay simulates only the requests that attempt served (``attempt_records``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pp_runtime.config import PATH_KEYS, UNREAD_BY_UNORDERED, Config, ConfigError, unread_dropped
from pp_runtime.rundir.outputs_file import OUTPUTS_FILE, scan_outputs
from pp_runtime.sim.compare import compare_runs, load_summary, run_summary
from pp_runtime.sim.links import Link, LinkModel
from pp_runtime.sim.output import check_sim_out_dir, write_sim_run
from pp_runtime.sim.pipeline import SimResult
from pp_runtime.sim.sim_job import SimJob, resolve_sim_job
from pp_runtime.trace.tracer import EventKind


class ReplayError(ValueError):
    """A run directory cannot be replayed; the message names the file and what to do."""


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved Config of a run directory; relative paths resolved against the directory the run was launched
    from (``_resolve_launch_relative``)."""
    from omegaconf import OmegaConf

    run = Path(run_dir)
    launch_dir = None
    if (run / "metrics.json").exists() and "config" in (metrics := json.loads((run / "metrics.json").read_text())):
        data = OmegaConf.create(metrics["config"])
        launch_dir = metrics.get("launch_dir")
    elif (run / ".hydra" / "config.yaml").exists():
        data = OmegaConf.load(run / ".hydra" / "config.yaml")
    else:
        raise ReplayError(f"run dir {str(run)!r} has neither metrics.json with a 'config' nor .hydra/config.yaml: "
                          f"pass a directory written by pp-run")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except Exception as exc:  # noqa: BLE001 - omegaconf raises several kinds for unknown or mistyped keys
        raise ReplayError(f"run dir {str(run)!r}: its config does not fit this checkout's schema ({exc})") from None
    for key in UNREAD_BY_UNORDERED:  # recorded before the other policies refused them
        setattr(cfg.scheduler, key, unread_dropped(cfg.scheduler.policy, key, getattr(cfg.scheduler, key)))
    if "split_lm_head" not in data.get("pipeline", {}):  # recorded before the head could be split: it was not
        cfg.pipeline.split_lm_head = False
    _resolve_launch_relative(cfg, run, launch_dir)
    if cfg.pipeline.stages is None and (run / "events.npz").exists():
        from pp_runtime.trace.reports import load_events

        cfg.pipeline.stages = len(load_events(str(run)))
    return cfg


def _resolve_launch_relative(cfg: Config, run: Path, recorded: str | None = None) -> None:
    """Make the run's relative paths (``workload.path``, ``model.path``, the cost model paths) absolute against the
    directory the run was launched from, where the file exists there, so a replay works from any directory: the
    ``launch_dir`` its metrics.json records (``recorded``), else ``hydra.runtime.cwd`` in ``.hydra/hydra.yaml``
    (which a later launch into the same directory rewrites). Otherwise they stay relative to the current
    directory."""
    from omegaconf import OmegaConf

    dirs = [recorded] if recorded else []
    try:
        dirs.append(OmegaConf.select(OmegaConf.load(run / ".hydra" / "hydra.yaml"), "hydra.runtime.cwd"))
    except Exception:  # noqa: BLE001 - no or a damaged hydra.yaml
        pass
    for section, key in (k.split(".") for k in PATH_KEYS):  # as given on the run's command line
        value = getattr(getattr(cfg, section), key)
        if not value or Path(value).is_absolute():
            continue
        for launch_dir in filter(None, dirs):
            if (Path(launch_dir) / value).exists():
                setattr(getattr(cfg, section), key, str(Path(launch_dir) / value))
                break


def recorded_tokens(run_dir: str | Path) -> dict[str, list[int]]:
    """Request id -> output token ids, from the complete lines of outputs.jsonl that the recorded attempt wrote."""
    return {rec["id"]: rec["output_token_ids"] for rec in attempt_records(run_dir)[1]}


def attempt_records(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """outputs.jsonl's complete lines split into (those of attempts before the recorded one, the rest).

    The recorded attempt is the one metrics.json describes (its ``attempt``; ``resumed``: how many requests
    earlier attempts finished). Lines carry the ``attempt`` that wrote them; in a file written before they did,
    the earlier attempts' lines are the first ``resumed`` ones (a resume only appends). Raises ReplayError
    when there is no outputs.jsonl.
    """
    run = Path(run_dir)
    path = run / OUTPUTS_FILE
    if not path.exists():
        raise ReplayError(f"run dir {str(run)!r} has no {OUTPUTS_FILE}: pass a directory written by pp-run")
    # A preempted or killed run may end in a torn line: the same reader as a resume, which drops it.
    records = scan_outputs(path).records
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    resumed, attempt = metrics.get("resumed") or 0, metrics.get("attempt") or 1
    if not resumed:
        return [], records
    if any(rec.get("attempt") == attempt for rec in records):
        earlier = [rec.get("attempt", 0) < attempt for rec in records]  # untagged lines predate the tagged ones
        return ([rec for rec, e in zip(records, earlier) if e], [rec for rec, e in zip(records, earlier) if not e])
    return records[:resumed], records[resumed:]


def replay_sampler(job: SimJob, tokens: dict[str, list[int]]):
    """``sample(piece)`` returning the token the real run sampled at that step of that request."""
    missing = [r.id for r in job.requests if r.id not in tokens]
    if missing:
        raise ReplayError(f"outputs.jsonl lacks requests {missing[:5]} of the run's workload: the run did not finish, "
                          "or the workload file changed since")
    by_seq = [tokens[r.id] for r in job.requests]

    def sample(piece) -> int:
        out = by_seq[piece.seq_id]
        return out[piece.step] if piece.step < len(out) else -1  # -1 never occurs: past the record, run on

    return sample


class MeasuredTimes:
    """A time model that returns a recorded run's measured compute durations, micro-batch after micro-batch in
    launch order (stateful: the k-th ``predict`` call gives the k-th micro-batch's times). With it, a replay
    isolates what the planner and the links do from what the cost model gets wrong."""

    stateful = True  # each predict consumes a recorded micro-batch: no yardstick for anything else

    def __init__(self, events: dict[int, np.ndarray]):
        self.num_stages = len(events)
        per_stage = []
        for s in range(self.num_stages):
            ev = events[s]
            compute = ev[(ev[:, 0] == EventKind.COMPUTE) & (ev[:, 3] >= 0)]
            # A micro-batch may have several compute events on a stage (stage 0's half of a split LM head): summed.
            mbs, at = np.unique(compute[:, 3], return_inverse=True)
            per_stage.append(np.bincount(at, weights=compute[:, 2] - compute[:, 1], minlength=len(mbs)) / 1e9)
        counts = {len(d) for d in per_stage}
        if len(counts) != 1:
            raise ReplayError(f"stages recorded different numbers of compute events ({sorted(counts)}); the run's "
                              "tracer dropped events: raise tracer.capacity")
        self.times = np.stack(per_stage, axis=1)  # [num_micro_batches, num_stages] seconds
        self.calls = 0

    def predict(self, pieces) -> list[float]:
        if self.calls >= len(self.times):
            raise ReplayError(f"the simulation launched more micro-batches than the {len(self.times)} recorded")
        row = self.times[self.calls]
        self.calls += 1
        return row.tolist()

    def __repr__(self) -> str:
        return f"MeasuredTimes({len(self.times)} micro-batches x {self.num_stages} stages)"


def measured_links(events: dict[int, np.ndarray], preset: LinkModel) -> LinkModel:
    """Links fitted to a recorded run, in ``preset``'s mode (eager or rendezvous, ``sim.rendezvous`` of the run):
    per hop, the sender's mean SEND time per micro-batch (rank 0 sends a plan and the activations), and as latency
    the mean time from when both sides were ready (the send's end, the receiver's wait start, whichever is later)
    to the end of the receiver's wait; for an eager hop only over receivers that were waiting when the send ended
    (data that came while the receiver computed shows no latency). Bandwidth is folded into that latency. A hop
    without matched events keeps ``preset``'s latency and bandwidth."""
    n = len(events)
    links = []
    for s, fallback in zip(range(n), (*preset.hops, preset.back)):
        snd, rcv = events[s], events[(s + 1) % n]
        sends: dict[int, list[int]] = {}  # mb -> [end of its last SEND, SEND ns in all]
        for r in snd[(snd[:, 0] == EventKind.SEND) & (snd[:, 3] >= 0)].tolist():
            last = sends.setdefault(int(r[3]), [0, 0])
            last[0], last[1] = max(last[0], r[2]), last[1] + r[2] - r[1]
        waits = {int(r[3]): r for r in rcv[(rcv[:, 0] == EventKind.WAIT) & (rcv[:, 3] >= 0)]}
        pairs = [(sends[m][0], w) for m, w in waits.items() if m in sends]
        if not fallback.rendezvous:
            pairs = [(end, w) for end, w in pairs if w[1] <= end] or pairs
        lat = [(w[2] - max(end, w[1])) / 1e9 for end, w in pairs]
        send_s = float(np.mean([v[1] / 1e9 for v in sends.values()])) if sends else fallback.send_s
        mode = fallback.rendezvous
        if lat:
            links.append(Link(f"{fallback.kind} (measured)", math.inf, max(0.0, float(np.mean(lat))), send_s, mode))
        else:
            links.append(Link(fallback.kind, fallback.bandwidth_Bps, fallback.latency_s, send_s, mode))
    return LinkModel(tuple(links[:-1]), links[-1])


def replay(run_dir: str | Path, *, out_dir: str | Path | None = None, cost_model_path: str | None = None,
           measured_times: bool = False, fit_from_events: bool = False, planner_time_us: float | None = None,
           preset_links: bool = False) -> tuple[SimResult, list[dict]]:
    """Re-simulate ``run_dir`` and write the simulated run into ``out_dir`` (default ``run_dir/replay``).

    ``cost_model_path`` overrides the run's cost model; ``measured_times`` uses the run's own compute durations
    instead (``MeasuredTimes``); ``fit_from_events``, for a run without a cost model, fits one to its own events
    (``fit_run_cost_model``: in-sample, so flattering). ``planner_time_us`` charges a constant planner time (None:
    measure it). Links are fitted to the run's events (``measured_links``) unless ``preset_links`` (then
    ``sim.link``'s presets). Returns the result and ``compare_runs(measured, predicted)`` rows. Raises ConfigError,
    before anything else, if ``out_dir`` holds a real run's files (``check_sim_out_dir``).
    """
    from pp_runtime.planner.cost_model import CostModel, CostModelError

    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "replay"
    check_sim_out_dir(out, key="--out")  # first: a real run's directory is never overwritten
    cfg = load_run_config(run)
    if not (run / "events.npz").exists():
        raise ReplayError(f"run dir {str(run)!r} has no events.npz: a replay needs the run's traced events (its "
                          f"links, and with --measured-times its compute times); rerun the job with "
                          f"tracer.enabled=true")
    path = cost_model_path or (str(run / "cost_model.json") if (run / "cost_model.json").exists() else None) \
        or cfg.scheduler.cost_model_path
    try:
        cost_model = CostModel.from_json(path) if path else None
    except CostModelError as exc:
        raise ReplayError(str(exc)) from None
    if cost_model is None and fit_from_events:
        cost_model = fit_run_cost_model(run)
    if cost_model is None and not measured_times:
        raise ReplayError(f"run dir {str(run)!r} has no cost_model.json (its run did not profile the stages: a "
                          f"pp-sim run, or a policy without a cost model) and its config names no "
                          f"scheduler.cost_model_path: pass "
                          f"--cost-model PATH (a cost_model.json of a run on the same machine and layout), or "
                          f"--fit-from-events")
    cfg.output_dir = str(out)
    job, result = _replay_run(run, cfg, cost_model, path=path, measured_times=measured_times,
                              planner_time_us=planner_time_us, preset_links=preset_links)
    bubbles = write_sim_run(out, result, cfg, tokenizer=job.tokenizer, info={**job.info(), "replay_of": str(run)},
                            key="--out")
    return result, compare_runs(load_summary(run), run_summary(result.metrics, bubbles))


def fit_run_cost_model(run_dir: str | Path):
    """A CostModel fitted to a run's own compute events: a replay with its measured times recovers the pieces
    of every micro-batch (the planner makes the same ones), whose work and measured seconds are the fit's rows."""
    from pp_runtime.planner.cost_model import CostModel, CostModelError, work

    run = Path(run_dir)
    cfg = load_run_config(run)
    job, result = _replay_run(run, cfg, None, path=None, measured_times=True, planner_time_us=None,
                              preset_links=False)
    times = job.time_model.times  # [num_micro_batches, num_stages], in launch order
    rows = [(s, *work(mb.pieces), float(times[k, s])) for k, mb in enumerate(result.micro_batches)
            for s in range(times.shape[1])]
    try:
        return CostModel.fit(rows)
    except CostModelError as exc:
        raise ReplayError(f"cannot fit a cost model to {str(run)!r}'s events: {exc}") from None


def _replay_run(run: Path, cfg: Config, cost_model, *, path: str | None, measured_times: bool,
                planner_time_us: float | None, preset_links: bool) -> tuple[SimJob, SimResult]:
    from pp_runtime.planner import needs_cost_model
    from pp_runtime.trace.reports import load_events

    if cost_model is None and needs_cost_model(cfg.scheduler):
        raise ReplayError(f"scheduler.policy={cfg.scheduler.policy} balances by a cost model and {str(run)!r} has "
                          "no cost_model.json: pass --cost-model PATH")
    cfg.sim.cost_model, cfg.sim.cost_model_path = "profiled", path
    cfg.sim.planner_time_us = planner_time_us
    if cost_model is None:  # measured times replace the time model: a placeholder, so none is looked up on disk
        from pp_runtime.planner.cost_model import CostModel

        cost_model = CostModel.default(cfg.pipeline.stages)
    job = resolve_sim_job(cfg, run_cost_model=cost_model)
    events = load_events(str(run))
    if measured_times:
        job.time_model = MeasuredTimes(events)
    if not preset_links and cfg.pipeline.stages > 1:
        job.links = measured_links(events, job.links)
    if job.time_model.num_stages != cfg.pipeline.stages:
        raise ConfigError(f"the cost model of {path!r} has {job.time_model.num_stages} stage(s) but the run had "
                          f"{cfg.pipeline.stages}; pass --cost-model with a file for {cfg.pipeline.stages} stages")
    # A resumed run: its events and metrics are the last attempt's, which served the requests not done before.
    earlier, served = attempt_records(run)
    done = {rec["id"] for rec in earlier}
    job.requests = [r for r in job.requests if r.id not in done]
    tokens = {rec["id"]: rec["output_token_ids"] for rec in served}
    return job, job.run(sample=replay_sampler(job, tokens))
