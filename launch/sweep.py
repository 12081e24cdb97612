"""``pp-sweep [-m] scheduler=sarathi,orca scheduler.token_budget=256,512 pipeline.stages=1,2 [fixed overrides]``.

Expands a Hydra-style sweep (comma lists, ``range(...)`` and ``choice(...)`` are axes; Hydra's own override
parser and basic sweeper do the expansion) and runs every combination as its own torchrun job, one after the
other, through torch's elastic launcher: ``pipeline.stages`` ranks of ``python -m launch.run`` with the job's
overrides, a standalone c10d rendezvous on 127.0.0.1 on a port the OS picks, and ``hydra.run.dir`` set to
``<hydra.sweep.dir>/<hydra.sweep.subdir>`` (``launch/sweep_dirs.py``; ``--out`` is a shortcut for the sweep
directory, and each job's directory defaults to ``<NN>_<slug>``). The ranks' stdout and stderr go to
``<job dir>/torchrun/``. A re-run of a sweep into the same directory skips the jobs that completed with the
same config, and resumes the ones that stopped.

Each job's config is composed and validated here first, so a bad value fails that job at once without starting
ranks. A failed job (non-zero exit, or over ``--timeout``) is recorded with the tail of its error and the sweep
goes on. ``--with-hf-baseline`` adds one run of ``scripts.hf_baseline`` with the fixed overrides. At the end
``summary.csv``, ``summary.md`` and ``summary.png`` go into the sweep directory and the table is printed.
Exit code: 0 when every job succeeded, 1 when any failed, 2 for malformed overrides.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from launch.sweep_dirs import finished_result, place_jobs, split_sweep_dirs
from launch.sweep_summary import HF_JOB, Job, JobResult, write_summary
from pp_runtime.rundir.run_state import read_state

_REPO = Path(__file__).resolve().parent.parent
_TAIL_LINES = 15


class SweepError(ValueError):
    """The sweep itself is malformed (an override that does not parse, an unsupported sweep kind)."""


def main(argv: list[str] | None = None) -> int:
    """Run the sweep described by ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = argparse.ArgumentParser(prog="pp-sweep", description="Run a Hydra-style sweep of pp-runtime jobs, "
                                     "one torchrun job per combination, and summarise them.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides; comma lists are sweep axes")
    parser.add_argument("-m", "--multirun", action="store_true", help="accepted for familiarity; always a sweep")
    parser.add_argument("--out", help="sweep directory, as hydra.sweep.dir (default: multirun/<date>/<time>)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per job before it is killed")
    parser.add_argument("--with-hf-baseline", action="store_true",
                        help="also run scripts/hf_baseline.py once with the fixed overrides")
    parser.add_argument("--hf-batch-size", type=int, default=8, help="static batch size of the HF baseline")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    try:
        sweep_dir, subdir, overrides = split_sweep_dirs(args.overrides)
        axes, fixed, jobs = expand(overrides)
        out, jobs = place_jobs(jobs, out=args.out, sweep_dir=sweep_dir, subdir=subdir)
    except ValueError as exc:  # SweepError, or sweep directories that do not resolve
        print(f"pp-sweep: {exc}", file=sys.stderr)
        return 2
    checked = [(job, *_check(job)) for job in jobs]
    if args.dry_run:
        for job, nproc, problem, fingerprint in checked:
            done = not problem and finished_result(job, out / job.name, fingerprint)
            print(f"{job.name}: nproc={nproc} {' '.join(job.overrides)}" + (f"  [{problem}]" if problem else "")
                  + ("  [done, skipped]" if done else ""))
        if args.with_hf_baseline:
            print(f"{HF_JOB}: python -m scripts.hf_baseline --batch-size {args.hf_batch_size} {' '.join(fixed)}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    print(f"pp-sweep: {len(jobs)} job(s) into {out}")
    results: list[JobResult] = []
    try:
        for i, (job, nproc, problem, fingerprint) in enumerate(checked, 1):
            print(f"[{i}/{len(jobs)}] {job.name} ({nproc} rank(s)) ...", end=" ", flush=True)
            result = JobResult(job, "failed", error=problem) if problem else \
                finished_result(job, out / job.name, fingerprint) or \
                _run_job(job, out / job.name, nproc=nproc, timeout=args.timeout)
            results.append(result)
            print(_status_line(result), flush=True)
        if args.with_hf_baseline:
            print(f"[hf] {HF_JOB} ...", end=" ", flush=True)
            results.append(_run_hf_baseline(fixed, out / HF_JOB, batch_size=args.hf_batch_size,
                                            timeout=args.timeout))
            print(_status_line(results[-1]), flush=True)
    except KeyboardInterrupt:
        print("\npp-sweep: interrupted; summarising the finished jobs", file=sys.stderr)
    print(write_summary(out, axes, results))
    print(f"summary in {out / 'summary.md'}, {out / 'summary.csv'}, {out / 'summary.png'}")
    return 0 if results and all(r.status == "ok" for r in results) else 1


def expand(overrides: list[str]) -> tuple[list[str], list[str], list[Job]]:
    """Split ``overrides`` into sweep axes and fixed overrides, and list one Job per combination.

    Returns (swept keys, fixed overrides without ``hydra.*``, jobs in Hydra's order: the first axis varies
    slowest). ``hydra.run.dir`` / ``hydra.sweep.*`` are dropped: every job gets its own run directory.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise SweepError(str(exc)) from None
    parsed = [o for o in parsed if o.key_or_group not in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")]
    last = {o.get_key_element(): o for o in parsed}  # a repeated key: the last one wins, at the first's place
    keys = list(last)  # the basic sweeper's order
    axes = [key for key, o in last.items() if o.is_sweep_override()]
    try:
        (combos,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except (HydraException, AssertionError) as exc:
        raise SweepError(f"cannot expand the sweep ({exc or 'glob() needs the config'}); list the values "
                         f"as a,b,c or use range(start,stop,step)") from None
    fixed = [entry for key, entry in zip(keys, combos[0]) if key not in axes and not key.startswith("hydra.")]
    width = len(str(len(combos) - 1))
    jobs = []
    for index, combo in enumerate(combos):
        swept = {key: entry[len(key) + 1:] for key, entry in zip(keys, combo) if key in axes}
        slug = "_".join(f"{key.lstrip('+~').split('.')[-1]}-{value}" for key, value in swept.items())
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", slug)[:80].strip("_")
        name = f"{index:0{width}d}_{slug}" if slug else f"{index:0{width}d}"
        jobs.append(Job(name, swept, tuple(combo)))
    return axes, fixed, jobs


def _check(job: Job) -> tuple[int, str | None, dict]:
    """(ranks to start, None, the config's fingerprint as run_state.json stores it) when the job's config
    composes and validates, else (1, the error, {})."""
    from pp_runtime.config import ConfigError, compose_config
    from pp_runtime.rundir.run_state import config_hash, file_sha256

    try:
        cfg = compose_config([o for o in job.overrides if not o.lstrip("+~").startswith("hydra.")])
        if cfg.pipeline.stages is None:  # launch.run takes the world size, and we start one rank
            cfg.pipeline.stages = 1
        cfg.validate()
    except ConfigError as exc:
        return 1, f"config error: {exc}", {}
    fingerprint = {"config_hash": config_hash(cfg), "request_file_sha256": file_sha256(cfg.workload.path)}
    return cfg.pipeline.stages, None, fingerprint


def _run_job(job: Job, job_dir: Path, *, nproc: int, timeout: float) -> JobResult:
    """One torchrun job in an agent process of its own (its own process group, so a timeout ends every rank)."""
    import torch.distributed.launcher.api  # noqa: F401  (imported once here, so a forked agent starts at once)

    log_dir = job_dir / "torchrun"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "failure.json").unlink(missing_ok=True)  # from an earlier sweep into this dir
    # An earlier run's metrics.json stays until this run replaces it: a job whose run refuses to resume (its config
    # changed) must not lose the finished results it would have resumed.
    before = _stamp(job_dir / "metrics.json")
    args = ["-m", "launch.run", *job.overrides, f"hydra.run.dir={_quote(str(job_dir))}"]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    sys.stdout.flush()
    sys.stderr.flush()
    agent = ctx.Process(target=_agent_main, args=(nproc, args, str(log_dir)), name=f"pp-sweep-{job.name}")
    start = time.monotonic()
    agent.start()
    try:
        agent.join(timeout)
    finally:
        timed_out = agent.is_alive()
        if timed_out:
            _end_group(agent)
    seconds = time.monotonic() - start
    if timed_out:
        return JobResult(job, "timeout", seconds, f"timed out after {timeout:g}s\n" + _error_tail(log_dir, 0))
    if agent.exitcode != 0:
        failure = _read_json(log_dir / "failure.json") or {}
        rank = failure.get("rank", 0)
        code = failure.get("exitcode")
        head = (f"the launcher exited with {agent.exitcode}" if code is None else
                f"rank {rank} was killed by signal {-code}" if code < 0 else f"rank {rank} exited with {code}")
        return JobResult(job, "failed", seconds, head + "\n" + _error_tail(log_dir, rank))
    metrics = _read_json(job_dir / "metrics.json")
    # Unchanged, it is an earlier attempt's: right only if that attempt finished every request (a resumed run with
    # nothing left to do keeps it).
    if metrics is None or (_stamp(job_dir / "metrics.json") == before
                           and (read_state(job_dir) or {}).get("status") != "complete"):
        return JobResult(job, "failed", seconds, f"the job exited 0 but wrote no {job_dir / 'metrics.json'}")
    return JobResult(job, "ok", seconds, metrics=metrics)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of ``path``, None if absent: tells a file written since from one left before."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _agent_main(nproc: int, args: list[str], log_dir: str) -> None:
    """Runs in the agent process: the elastic agent starts ``nproc`` ranks of ``python <args>`` and waits."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.setpgrp()
    with open(os.path.join(log_dir, "agent.log"), "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    os.environ["PYTHONPATH"] = _pythonpath()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
                          logs_specs=DefaultLogsSpecs(log_dir=log_dir, redirects=Std.ALL))
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        Path(log_dir, "failure.json").write_text(json.dumps({"rank": rank, "exitcode": failure.exitcode}))
        sys.exit(1)


def _end_group(agent) -> None:
    """SIGTERM the agent's process group (the agent then stops its ranks), SIGKILL whatever is left."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(agent.pid, sig)
        except ProcessLookupError:  # not its own group yet (or gone): end the agent alone
            if agent.is_alive():
                os.kill(agent.pid, sig)
        agent.join(grace)
        if not agent.is_alive():
            try:  # ranks that outlived the agent
                os.killpg(agent.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


def _run_hf_baseline(fixed: list[str], out_dir: Path, *, batch_size: int, timeout: float) -> JobResult:
    job = Job(HF_JOB, {}, tuple(fixed))
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "scripts.hf_baseline", "--out", str(out_dir), "--batch-size", str(batch_size),
           *fixed]
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    start = time.monotonic()
    with open(out_dir / "hf_baseline.log", "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = None
    seconds = time.monotonic() - start
    tail = _tail(out_dir / "hf_baseline.log")
    if rc is None:
        return JobResult(job, "timeout", seconds, f"timed out after {timeout:g}s\n{tail}")
    metrics = _read_json(out_dir / "metrics.json") if rc == 0 else None
    if metrics is None:
        return JobResult(job, "failed", seconds, f"exited with {rc}\n{tail}")
    return JobResult(job, "ok", seconds, metrics=metrics)


def _pythonpath() -> str:
    """PYTHONPATH with this checkout first, so ``-m launch.run`` works from any directory, installed or not."""
    return os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))


def _error_tail(log_dir: Path, rank: int) -> str:
    # The newest: an earlier sweep into the same directory left its own (torchrun's run ids are random, so their
    # names do not sort by age).
    stderr = sorted(log_dir.glob(f"*/attempt_*/{rank}/stderr.log"), key=lambda p: p.stat().st_mtime_ns)
    text = _tail(stderr[-1]) if stderr else ""
    return text or _tail(log_dir / "agent.log")


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        kept = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return "\n".join(kept[-lines:])


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _quote(value: str) -> str:
    """A Hydra override value for an arbitrary path (quoted so that '=', ',' or spaces stay literal)."""
    return "'" + value.replace("'", "\\'") + "'"



def _status_line(result: JobResult) -> str:
    if result.skipped:
        return "done earlier, skipped"
    if result.status == "ok":
        tput = result.metrics.get("output_throughput")
        rate = f", {tput:.1f} tok/s" if isinstance(tput, (int, float)) and math.isfinite(tput) else ""
        return f"ok ({result.seconds:.1f}s{rate})"
    last = (result.error or "").strip().splitlines()
    return f"{result.status.upper()} ({result.seconds:.1f}s): {last[-1] if last else 'no error output'}"


if __name__ == "__main__":
    sys.exit(main())
