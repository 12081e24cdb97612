"""A run directory across attempts: what it was started with, what is done, and whether it is complete.

Rank 0 keeps two files next to ``outputs.jsonl``:

- ``run_state.json``: the config the run was started with (flattened ``key: value``) and its hash, a hash of
  the requests as read (ids, prompt token ids, sampling parameters, arrival times), the request file's
  sha256, the attempt number, the run's ``sampling_seed`` and a ``status``: ``running``, ``preempted``,
  ``incomplete`` or ``complete``.
- ``INCOMPLETE``: present from the start of an attempt until it ends with every request id in outputs.jsonl
  exactly once; its line says why (started, preempted by a signal, ids check failed). A crash leaves it.

``plan_resume`` runs on every rank before the ranks meet, so a changed config or request file fails
everywhere at once (``ConfigError``); ``begin_attempt`` and ``end_attempt`` run on rank 0 only.
Keys under ``runtime``, ``tracer``, ``debug`` and ``sim`` (timeouts, tracing, fault injection, the simulator's
settings, which a job never reads) and ``output_dir`` may change between attempts; any other change is refused
unless ``runtime.resume`` is ``force`` or ``false``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pp_runtime.config import UNREAD_BY_UNORDERED, Config, ConfigError, unread_dropped
from pp_runtime.rundir.outputs_file import OUTPUTS_FILE, scan_outputs
from pp_runtime.trace.reports import EVENTS_FILE, write_json

log = logging.getLogger("pp_runtime")

STATE_FILE = "run_state.json"
MARKER_FILE = "INCOMPLETE"
# What a run writes into its run directory (and pp-sim --replay's replay/ folder). runtime.resume=false moves an
# earlier run's into old-<time>/, a run directory of its own, so that none passes for the new run's. The rank logs
# stay: Hydra has them open, and each attempt's lines follow the earlier ones.
RUN_FILES = (OUTPUTS_FILE, STATE_FILE, MARKER_FILE, "metrics.json", "cost_model.json", EVENTS_FILE, "trace.json",
             "bubbles.json", "timeline.png", "replay")
# May change between attempts: outputs do not depend on them.
_VOLATILE = ("output_dir", "runtime", "tracer", "debug", "sim")
# Keys that move work between stages and never change a token (tests/test_vocab_parallel.py): an attempt may
# change them.
_SAME_TOKENS = ("pipeline.split_lm_head",)


@dataclass
class ResumePlan:
    """What this attempt does with the run directory (the same on every rank)."""

    state: dict  # run_state.json as this attempt writes it
    done: frozenset[str] = frozenset()  # request ids with a complete line from earlier attempts
    valid_bytes: int = 0  # outputs.jsonl is cut back to this length: a torn last line goes
    torn: bool = False
    move_aside: bool = False  # runtime.resume=false and an earlier run's files (RUN_FILES) are to move out of the way
    changes: list[str] = field(default_factory=list)  # what differs from the stored state (accepted by force)


def config_fingerprint(cfg: Config) -> dict:
    """The resolved config as flat ``key: value`` pairs, less the keys that may change between attempts.

    ``workload.path`` is left out for request files: their content is hashed instead, so a moved file is fine.
    """
    flat = _flatten(cfg)
    if cfg.workload.kind in ("jsonl", "trace"):
        flat.pop("workload.path", None)
    for key in _SAME_TOKENS:
        flat.pop(key, None)
    return flat


def _flatten(cfg: Config) -> dict:
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = list(value) if isinstance(value, tuple) else value

    walk("", {k: v for k, v in asdict(cfg).items() if k not in _VOLATILE})
    return flat


def config_hash(cfg: Config) -> str:
    """Hash of ``config_fingerprint(cfg)``, as stored in run_state.json (pp-sweep compares it to skip done jobs)."""
    return _digest(config_fingerprint(cfg))


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def requests_hash(requests) -> str:
    """Hash of the requests as read: a changed request file (or synthetic workload) changes it."""
    return _digest([[r.id, list(r.prompt_token_ids), asdict(r.params), r.arrival_s] for r in requests])


def file_sha256(path: str | None) -> str | None:
    if not path or not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state(out_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def plan_resume(cfg: Config, requests) -> ResumePlan:
    """Decide how this attempt treats ``cfg.output_dir``; raises ConfigError if it may not continue it."""
    out_dir, mode = Path(cfg.output_dir), cfg.runtime.resume
    fingerprint = config_fingerprint(cfg)
    state = {"config_hash": _digest(fingerprint), "requests_hash": requests_hash(requests),
             "num_requests": len(requests), "request_file_sha256": file_sha256(cfg.workload.path),
             "config": fingerprint, "attempt": 1, "status": "running",
             # The seed of unseeded sampled requests (pp_runtime.request.with_run_seed): new for every run, kept
             # by a resumed one. Drawn on every rank; rank 0's is the one used and written.
             "sampling_seed": secrets.randbits(63)}
    old = read_state(out_dir)
    outputs = out_dir / OUTPUTS_FILE
    has_lines = outputs.exists() and outputs.stat().st_size > 0
    # An earlier attempt that wrote no line yet (stopped or failed before its first request finished) is resumed
    # too: same checks, same sampling seed, the next attempt number.
    if mode is False or (not has_lines and old is None):
        return ResumePlan(state, move_aside=mode is False and any((out_dir / f).exists() for f in RUN_FILES))
    changes = _changes(old, state, cfg) if old is not None else [
        f"{outputs} exists but no {STATE_FILE} says what it was started with"]
    if changes and mode != "force":
        raise ConfigError(f"run directory {out_dir} cannot be resumed: {'; '.join(changes)}. Set runtime.resume=false "
                          f"to start over (the earlier run's files move into old-<time>/), runtime.resume=force to "
                          f"continue it anyway, or choose another hydra.run.dir")
    state["attempt"] = (old or {}).get("attempt", 0) + 1
    state["sampling_seed"] = (old or {}).get("sampling_seed", state["sampling_seed"])
    if not has_lines:
        return ResumePlan(state, changes=changes)
    scan = scan_outputs(outputs)
    return ResumePlan(state, frozenset(scan.ids), scan.valid_bytes, scan.torn, changes=changes)


def _changes(old: dict, new: dict, cfg: Config) -> list[str]:
    changes = []
    before, now = dict(old.get("config", {})), new["config"]
    for key in UNREAD_BY_UNORDERED:
        if f"scheduler.{key}" in before:
            before[f"scheduler.{key}"] = unread_dropped(before.get("scheduler.policy"), key,
                                                        before[f"scheduler.{key}"])
    # A key added to the config since the run started (e.g. pipeline.split_lm_head) is not in its record: it
    # compares as its default, so such a run still resumes unless the key is set to something else now.
    for key, value in _flatten(Config()).items():
        if before and key in now and key not in before:
            before[key] = value
    if old.get("config_hash") != new["config_hash"] and _digest(before) != new["config_hash"]:
        keys = [k for k in sorted(set(before) | set(now)) if before.get(k, "<unset>") != now.get(k, "<unset>")]
        shown = ", ".join(f"{k}: {before.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}" for k in keys[:8])
        changes.append(f"the config changed ({shown or 'hash differs'}{', ...' if len(keys) > 8 else ''})")
    if old.get("requests_hash") != new["requests_hash"]:
        where = f"workload.path={cfg.workload.path!r}" if cfg.workload.path else f"workload={cfg.workload.kind}"
        changes.append(f"the requests changed ({where}: {old.get('num_requests')} request(s) when the run started, "
                       f"{new['num_requests']} now, with different content)")
    return changes


def begin_attempt(out_dir: str | Path, plan: ResumePlan) -> None:
    """Rank 0, once the ranks have met and before the attempt writes anything: clear the way for appending to
    outputs.jsonl (or, starting over, move the earlier run's files into ``old-<time>/``), record the attempt."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = out_dir / OUTPUTS_FILE
    if plan.move_aside:
        stem = f"old-{time.strftime('%Y%m%d-%H%M%S')}"
        aside, n = out_dir / stem, 1
        while aside.exists():
            aside, n = out_dir / f"{stem}-{n}", n + 1
        aside.mkdir()
        moved = [name for name in RUN_FILES if (out_dir / name).exists()]
        for name in moved:
            os.replace(out_dir / name, aside / name)
        log.warning("runtime.resume=false: moved the earlier run's %s to %s; starting over", ", ".join(moved), aside)
    elif plan.done or plan.torn:
        with open(outputs, "r+b") as f:
            f.truncate(plan.valid_bytes)  # drops a torn last line: its request runs again
        log.info("resuming %s (attempt %d): %d request(s) already in outputs.jsonl%s", out_dir,
                 plan.state["attempt"], len(plan.done), ", a torn last line discarded" if plan.torn else "")
    for change in plan.changes:
        log.warning("runtime.resume=force: continuing although %s", change)
    write_json(out_dir / STATE_FILE, plan.state)
    _write_marker(out_dir, f"attempt {plan.state['attempt']} started {_now()}; outputs.jsonl is incomplete until "
                           f"this file is gone (rerun the same command to resume)")


def end_attempt(out_dir: str | Path, plan: ResumePlan, *, status: str, note: str = "") -> None:
    """Rank 0, at the end: record ``status``; the marker goes only when the run is ``complete``."""
    out_dir = Path(out_dir)
    write_json(out_dir / STATE_FILE, dict(plan.state, status=status, ended=_now()))
    if status == "complete":
        (out_dir / MARKER_FILE).unlink(missing_ok=True)
    else:
        _write_marker(out_dir, f"{status} at {_now()}: {note}")


def _write_marker(out_dir: Path, text: str) -> None:
    tmp = out_dir / f"{MARKER_FILE}.tmp"
    tmp.write_text(text + "\n")
    os.replace(tmp, out_dir / MARKER_FILE)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
