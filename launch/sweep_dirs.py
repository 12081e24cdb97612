"""Where pp-sweep puts its jobs, and which of them a re-run can skip.

The sweep directory is ``hydra.sweep.dir`` (``--out`` is a shortcut for it; default ``multirun/<date>/<time>``),
each job's directory under it ``hydra.sweep.subdir`` (default ``<index>_<slug>`` of the swept values). Both may
use Hydra's interpolations: ``${now:...}``, ``${hydra.job.num}`` (the job's index), ``${hydra.job.name}``
(its default directory name) and ``${hydra.job.override_dirname}`` (its overrides, sorted, comma-joined).

A job whose directory holds a complete run (``run_state.json`` with status ``complete``) of the same config
hash and request file, and its ``metrics.json``, is done: a re-run of the sweep into the same directory skips it.
Any other job runs, and a stopped one resumes (``runtime.resume``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from launch.sweep_summary import Job, JobResult
from pp_runtime.rundir.run_state import MARKER_FILE, read_state

_DIR_KEYS = ("hydra.sweep.dir", "hydra.sweep.subdir")


def split_sweep_dirs(overrides: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(``hydra.sweep.dir``, ``hydra.sweep.subdir``, the other overrides); the last value of a key wins."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    found: dict[str, str] = {}
    rest = []
    for line in overrides:
        try:
            (parsed,) = OverridesParser.create().parse_overrides([line])
        except HydraException:
            rest.append(line)  # expand() reports it
            continue
        if parsed.key_or_group in _DIR_KEYS:
            found[parsed.key_or_group] = str(parsed.value())
        else:
            rest.append(line)
    return found.get("hydra.sweep.dir"), found.get("hydra.sweep.subdir"), rest


def place_jobs(jobs: list[Job], *, out: str | None, sweep_dir: str | None,
               subdir: str | None) -> tuple[Path, list[Job]]:
    """The sweep directory, and the jobs named after their directories under it; raises ValueError."""
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if out and sweep_dir and out != sweep_dir:
        raise ValueError(f"--out {out} and hydra.sweep.dir={sweep_dir} disagree; give one of them")
    setup_globals()  # Hydra's ${now:...} resolver
    try:
        root = OmegaConf.create({"d": out or sweep_dir or "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}"}).d
        if subdir is not None:
            jobs = [replace(job, name=str(OmegaConf.create({
                "hydra": {"job": {"num": i, "name": job.name, "override_dirname": ",".join(sorted(job.overrides))}},
                "d": subdir}).d)) for i, job in enumerate(jobs)]
    except OmegaConfBaseException as exc:
        raise ValueError(f"cannot resolve the sweep directory: {exc}") from None
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.name in seen:
            raise ValueError(f"hydra.sweep.subdir={subdir} puts two jobs into {job.name!r} "
                             f"({' '.join(seen[job.name].overrides)} / {' '.join(job.overrides)}); "
                             f"include ${{hydra.job.num}} in it")
        seen[job.name] = job
    return Path(root).resolve(), jobs


def finished_result(job: Job, job_dir: Path, fingerprint: dict) -> JobResult | None:
    """The result of an earlier complete run of ``job`` in ``job_dir`` with the same ``fingerprint``
    (``config_hash`` and ``request_file_sha256``, as in run_state.json), or None: the job must run."""
    state = read_state(job_dir)
    try:
        metrics = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if state is None or state.get("status") != "complete" or (job_dir / MARKER_FILE).exists():
        return None
    if any(state.get(key) != value for key, value in fingerprint.items()):
        return None
    return JobResult(job, "ok", metrics=metrics, skipped=True)
