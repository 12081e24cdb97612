"""The run directory Hydra makes for ``pp-run`` / ``pp-sim`` before the job starts, and removing it again when the
job stops on bad input (exit 2) before doing any work.

Hydra creates ``hydra.run.dir`` (default ``outputs/<date>/<time>``), writes ``.hydra/`` (rank 0) and opens each
process's log there before our code runs, so validation cannot come first without composing and resolving the job
twice. Instead, on bad input each process removes what Hydra made for it, and the folders Hydra created for this
launch go once empty: the last rank out removes them. Only what is this process's own goes:

- a folder only if it did not exist before the launch: its parent was changed after the command started (the
  torchrun agent's start, the same for every rank), as creating it changes its parent; a folder the user made
  beforehand (``mkdir -p mine/deep``, then ``hydra.run.dir=mine/deep``) stays, and so do its parents;
- nothing while another live process launched into the same directory (the same second's default
  ``outputs/<date>/<time>``) uses the same log (each holds a shared lock on its log from the start of its job), and
  ``.hydra/`` only if its ``config.yaml`` is the one this process composed. (Between Hydra making the directory and
  the other process's job starting, a few milliseconds, a removal can still come first.)

A directory holding anything else (an earlier run's outputs, which a resumed run's bad input must not touch) is
left as it is, and so is one whose log already held lines when this process started (an earlier run's).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

# A folder whose parent changed less than this after the command's start existed before it: /proc's start time is
# cut to 10 ms ticks, and Hydra makes the run directory a second or more after the start (Python and its imports).
_START_SLACK_S = 0.05


@dataclass
class HydraFiles:
    """What Hydra made for this process in its run directory (``files_hydra_made``)."""

    logs: list[Path]  # this process's log files
    hydra_dir: Path | None  # .hydra/, where Hydra wrote it (rank 0)
    config_yaml: str  # the config.yaml this process composed
    lock_fds: list[int]  # each log opened once more, under a shared flock held until the process exits


def files_hydra_made(dcfg: DictConfig) -> HydraFiles | None:
    """What Hydra made for this process in its run directory: this process's log file and, where Hydra wrote it
    (rank 0), ``.hydra/``. None when the log already held lines (the directory is an earlier run's too) or Hydra
    logs to no file there. ``dcfg``: the config Hydra handed the app. Call at the start of the Hydra app, before
    the job logs anything: it takes a shared lock on each log, which tells another process launched into the same
    directory (the same second's ``outputs/<date>/<time>``) that this one uses it."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    logs = [Path(h.baseFilename) for h in logging.getLogger().handlers  # Hydra's job_logging: on the root logger
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir]
    if not logs or any(p.exists() and p.stat().st_size > 0 for p in logs):
        return None
    fds = []
    for path in logs:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        fds.append(fd)
    return HydraFiles(logs, run_dir / hc.output_subdir if hc.output_subdir else None, OmegaConf.to_yaml(dcfg), fds)


def launch_time() -> float:
    """When the command started (``time.time()`` seconds): the torchrun agent's start under torchrun, the same for
    every rank, else this process's; read from /proc, to the 10 ms tick. Elsewhere: now (nothing counts as new)."""
    pid = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else os.getpid()
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def _folders_made_since(run_dir: Path, launch_dir: Path, start: float) -> list[Path]:
    """``run_dir`` and its parents below ``launch_dir`` that were created after ``start``, innermost first."""
    made, folder = [], run_dir
    while launch_dir in folder.parents and folder.parent.stat().st_mtime > start + _START_SLACK_S:
        made.append(folder)
        folder = folder.parent
    return made


def discard_run_dir(made: HydraFiles | None) -> None:
    """Bad input, nothing ran: remove what Hydra made for this process (``made``, from ``files_hydra_made``), then
    the run directory and its parents below the directory the command started in, each once it is empty and only
    if this launch created it.

    Nothing is removed when ``made`` is None, when the run directory is the launch directory (or above it), or
    when it holds anything but ``.hydra/`` and ``*.log`` files, or when another live process holds a lock on this
    process's log (``files_hydra_made``); ``.hydra/`` stays when its config.yaml is another process's."""
    if not made:
        return
    hc = HydraConfig.get()
    run_dir, launch_dir = Path(hc.runtime.output_dir), Path(hc.runtime.cwd)
    if run_dir == launch_dir or run_dir in launch_dir.parents:
        return
    hydra_names = {".hydra", hc.output_subdir}
    if any(p.name not in hydra_names and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    for fd in made.lock_fds:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another live process launched into this directory logs here too: all stays
            return
    new_folders = _folders_made_since(run_dir, launch_dir, launch_time())  # before removing changes the mtimes
    if made.hydra_dir is not None and _read(made.hydra_dir / "config.yaml") == made.config_yaml:
        shutil.rmtree(made.hydra_dir, ignore_errors=True)
    for path in made.logs:
        path.unlink(missing_ok=True)  # the handler keeps the open file: later lines go nowhere
    for folder in new_folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: another rank's log not removed yet, another process's files
            return


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None
