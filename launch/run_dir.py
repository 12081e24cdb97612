"""The run directory Hydra makes for ``pp-run`` / ``pp-sim`` before the job starts, and removing it again when the
job stops on bad input (exit 2) before doing any work.

Hydra creates ``hydra.run.dir`` (default ``outputs/<date>/<time>``), writes ``.hydra/`` (rank 0) and opens each
process's log there before our code runs, so validation cannot come first without composing and resolving the job
twice. Instead, on bad input each process removes what Hydra made for it, and the directory goes once empty: the
last rank out removes it, with its parents below the directory the command started in (``outputs/<date>/``,
``outputs/``) if they are empty too. A directory holding anything else (an earlier run's outputs, which a resumed
run's bad input must not touch) is left as it is, and so is one whose log already held lines when this process
started (an earlier run's).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig


def files_hydra_made() -> list[Path] | None:
    """What Hydra made for this process in its run directory: this process's log file and, where Hydra wrote it
    (rank 0), ``.hydra/``. None when the log already held lines (the directory is an earlier run's too) or Hydra
    logs to no file there. Call at the start of the Hydra app, before the job logs anything."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    logs = [Path(h.baseFilename) for h in logging.getLogger().handlers  # Hydra's job_logging: on the root logger
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir]
    if not logs or any(p.exists() and p.stat().st_size > 0 for p in logs):
        return None
    return logs + ([run_dir / hc.output_subdir] if hc.output_subdir else [])


def discard_run_dir(made: list[Path] | None) -> None:
    """Bad input, nothing ran: remove ``made`` (from ``files_hydra_made``), then the run directory and its parents
    below the directory the command started in, each once it is empty.

    Nothing is removed when ``made`` is None, when the run directory is the launch directory (or above it), or
    when it holds anything but ``.hydra/`` and ``*.log`` files."""
    if not made:
        return
    hc = HydraConfig.get()
    run_dir, launch_dir = Path(hc.runtime.output_dir), Path(hc.runtime.cwd)
    if run_dir == launch_dir or run_dir in launch_dir.parents:
        return
    hydra_names = {".hydra", hc.output_subdir}
    if any(p.name not in hydra_names and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    for path in made:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)  # the handler keeps the open file: later lines go nowhere
    folder = run_dir
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty: another rank's log not removed yet, or other files in a parent
            return
        folder = folder.parent
        if launch_dir not in folder.parents:
            return
