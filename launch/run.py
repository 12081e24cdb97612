"""The batch job: ``torchrun --nproc_per_node=N -m launch.run [overrides]`` (a Hydra app on every rank).

Every rank composes the same config. They share one run directory: unless ``hydra.run.dir`` is given, it is
stamped with the start time of the torchrun agent that started them all. Only rank 0 writes outputs and
``.hydra/``; each rank logs to its own ``rank<N>.log``. Running again into the same ``hydra.run.dir``
resumes the job (``runtime.resume``).

Exit codes, the same on every rank: 0 done; 1 a stage failed (or a request went missing from outputs.jsonl);
2 bad input (config, request file, model folder, ``-m``); 75 (``EXIT_PREEMPTED``) stopped early by SIGTERM /
SIGUSR1 with the finished requests flushed: rerun to resume. Under torchrun every failure, the handled ones
included, goes into torchrun's error file (``TORCHELASTIC_ERROR_FILE``), so its summary names the root-cause
rank with its traceback.
"""

from __future__ import annotations

import os
import signal

# Under torchrun, the agent sends SIGTERM to every rank as soon as one exits. A rank still importing would die of
# it (-15 in torchrun's summary) instead of reaching the bad input that stopped the first rank and exiting 2 as
# well: note the signal from the very start (run_or_exit decides what it means).
_early_signals: list[int] = []
if "TORCHELASTIC_RUN_ID" in os.environ:
    for _sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(_sig, lambda signum, frame: _early_signals.append(signum))

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import record  # noqa: E402

from launch.run_dir import HydraFiles, discard_run_dir, files_hydra_made  # noqa: E402
from pp_runtime.config import (  # noqa: E402
    CONFIG_PATH,
    Config,
    ConfigError,
    check_overrides,
    compose_config,
    register_configs,
)
from pp_runtime.request import RequestError  # noqa: E402
from stages.preemption import EXIT_PREEMPTED, Preempted, StopSignal  # noqa: E402

log = logging.getLogger("pp_runtime")
register_configs()

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
_composed = False  # Hydra handed over a typed config: an exit 1 before that is Hydra rejecting the overrides
_MULTIRUN = ("-m", "--multirun", "hydra.mode=MULTIRUN", "hydra.mode=multirun")


def _agent_start_time() -> float:
    """When this process's parent (the torchrun agent) started: the same for every local rank of a job."""
    try:
        ticks = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def rank_overrides(argv: list[str], env: dict) -> list[str]:
    """Hydra overrides that give all ranks one run directory, per-rank logs, and .hydra/ from rank 0 only."""
    extra = []
    rank = int(env.get("RANK", 0))
    under_torchrun = "TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env
    if under_torchrun and not any(a.startswith("hydra.run.dir=") for a in argv):
        stamp = time.strftime("%Y-%m-%d/%H-%M-%S", time.localtime(_agent_start_time()))
        extra.append(f"hydra.run.dir=outputs/{stamp}")
    extra.append(f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/rank{rank}.log")
    if rank != 0:
        extra.append("hydra.output_subdir=null")
    return extra


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base=None)
def _app(dcfg: DictConfig) -> None:
    cfg: Config = OmegaConf.to_object(dcfg)
    cfg.output_dir = HydraConfig.get().runtime.output_dir
    run_or_exit(cfg, hydra_files=files_hydra_made(dcfg))


def run_or_exit(cfg: Config, *, hydra_files: HydraFiles | None = None) -> None:
    """Run the job on this rank; on failure log it, write torchrun's error file and exit with the code above.

    ``hydra_files``: what Hydra made for this rank in the run directory (``launch.run_dir.files_hydra_made``); on
    bad input they are removed, and the run directory with them if that leaves it empty."""
    from launch.rank_job import run_job

    global _composed
    _composed = True
    rank = int(os.environ.get("RANK", 0))
    # Held around run_job's own handlers: a SIGTERM that torchrun sends once another rank has exited must not
    # cut this rank's error report short.
    with StopSignal() as early:
        try:
            if _early_signals:
                early.signum = _early_signals[0]
            if early.signum is not None:
                _stop_before_start(cfg, early.name)
            run_job(cfg)
        except Preempted as exc:
            log.warning("stage %d: %s", rank, exc)
            print(f"preempted: {exc}", file=sys.stderr)
            _record_error(exc)
            sys.exit(EXIT_PREEMPTED)
        except (ConfigError, RequestError, FileNotFoundError) as exc:
            _log_to_files(logging.ERROR, f"stage {rank}: {exc}")
            discard_run_dir(hydra_files)
            # Every rank checks the same input: one block per node on the console (torchrun's summary and error
            # files still carry each rank's message).
            exit_bad_input(exc, show=int(os.environ.get("LOCAL_RANK", 0)) == 0)
        except Exception as exc:
            log.exception("stage %d failed", rank)
            text = str(exc)
            print(f"error: {text}" if text.startswith("stage ") else f"error on stage {rank}: {text}", file=sys.stderr)
            _record_error(exc, consequence=text.startswith(f"stage {rank}: aborting"))
            sys.exit(EXIT_FAILED)


def _stop_before_start(cfg: Config, signame: str) -> None:
    """A signal came before this rank's job started: torchrun stopping the job because another rank exited, or
    a scheduler's preemption. Bad input fails here exactly as on the rank that exited first (exit 2, and
    torchrun's summary shows it on every rank); otherwise the job stops before the ranks meet (exit 75)."""
    from launch.rank_job import resolve_rank_job

    resolve_rank_job(cfg)
    raise Preempted(f"received {signame} before the ranks met; nothing ran (rerun to start)")


def _log_to_files(level: int, message: str) -> None:
    """Log ``message`` into the rank's log file only (not the console, which shows the bad-input block)."""
    entry = log.makeRecord(log.name, level, __file__, 0, message, None, None)  # `record` is torchrun's decorator
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(entry)


def exit_bad_input(exc: BaseException | str, *, show: bool = True) -> None:
    """Print bad input as one short block (if ``show``), put it into torchrun's error file (whose summary shows
    it; the file keeps the traceback under ``extraInfo.traceback``) and exit 2. Call inside the ``except`` block."""
    text = str(exc).strip()
    if show:
        print("error: bad input, nothing ran (exit 2)\n  " + text.replace("\n", "\n  "), file=sys.stderr)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        # No py_callstack: torchrun's summary shows the message instead of a traceback.
        data = {"message": {"message": f"bad input (exit 2): {text}",
                            "extraInfo": {"timestamp": str(int(time.time())), "traceback": traceback.format_exc()}}}
        try:
            Path(path).write_text(json.dumps(data))
        except OSError as err:
            log.warning("could not write torchrun's error file: %s", err)
    sys.exit(EXIT_BAD_INPUT)


def _record_error(exc: BaseException, *, consequence: bool = False) -> None:
    """Write torchrun's error file for a failure handled here (``record`` only sees uncaught exceptions, and
    Hydra turns those into SystemExit). Called inside the ``except`` block: the traceback is the live one.

    torchrun's summary names as root cause the error file with the smallest timestamp, in whole seconds, the
    lowest rank on a tie. A ``consequence`` (this rank aborts because another stage failed first) is stamped
    one second later, so that the summary names the stage that failed rather than stage 0.
    """
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    try:
        get_error_handler().record_exception(exc)
        if consequence and path:
            data = json.loads(Path(path).read_text())
            info = data["message"]["extraInfo"]
            info["timestamp"] = str(int(info["timestamp"]) + 1)
            Path(path).write_text(json.dumps(data))
    except (OSError, ValueError, KeyError) as err:  # the error file is a courtesy: the exit code still tells
        log.warning("could not write torchrun's error file: %s", err)


def refuse_multirun(argv: list[str]) -> str | None:
    """The message for Hydra's multirun flag (each rank would start its own sweep), or None without it."""
    if not any(a in _MULTIRUN for a in argv):
        return None
    return ("launch.run runs one job per torchrun launch and does not take Hydra's -m/--multirun; run the sweep "
            "with pp-sweep (python -m launch.sweep), which starts one torchrun job per combination: "
            "pp-sweep -m " + " ".join(a for a in argv if a not in _MULTIRUN))


def precheck_overrides(argv: list[str]) -> None:
    """Compose the config from ``argv`` once before Hydra's app does, so that an unknown key (with or without
    ``+``, named with the closest valid key), a missing group or a value of the wrong type is a bad-input block
    and exit 2 rather than Hydra's report. With Hydra flags (``--help``, ``--cfg job``...) only the keys are
    checked and Hydra does the rest."""
    try:
        if any(a.startswith("-") for a in argv):
            check_overrides([a for a in argv if "=" in a and not a.startswith("-")])
        else:
            compose_config(argv)
    except ConfigError as exc:
        exit_bad_input(exc)


@record
def main() -> None:
    """Entry point of every rank (``torchrun -m launch.run`` / ``pp-run``); exits with the codes above."""
    try:
        message = refuse_multirun(sys.argv[1:])
        if message:
            exit_bad_input(message)
        precheck_overrides(sys.argv[1:])
        sys.argv += rank_overrides(sys.argv[1:], dict(os.environ))
        _app()
    except SystemExit as exc:
        # Python resets its signal handlers to the default while it shuts down (about a second, with torch): the
        # SIGTERM torchrun sends once any rank exits would then kill this one, -15 in its summary instead of this
        # rank's own code. Ignored signals stay ignored. (Only under torchrun: an ignored signal is inherited by
        # every process started later, which a caller in the same process, a test, would not expect.)
        if "TORCHELASTIC_RUN_ID" in os.environ:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_IGN)
        if exc.code == 1 and not _composed:  # Hydra rejected a flag or a hydra.* override and printed why
            sys.exit(EXIT_BAD_INPUT)
        raise


if __name__ == "__main__":
    main()
