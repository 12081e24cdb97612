"""Fork N ranks of a function with torch.distributed env vars set, without torchrun's start-up cost.

Each rank runs ``fn(rank, world_size, *args)`` in a forked process (one intra-op thread); ``start_method="spawn"``
starts fresh interpreters instead, for ranks that use CUDA after the parent process has (a forked child cannot).
``run_ranks`` returns the ranks' results in rank order, or raises ``RanksFailed`` with every rank's exit code and
error.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import traceback
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RankOutcome:
    rank: int
    exitcode: int | None
    result: object = None
    error: str | None = None


class RanksFailed(RuntimeError):
    def __init__(self, outcomes: list[RankOutcome]):
        self.outcomes = outcomes
        lines = [f"rank {o.rank}: exit {o.exitcode}\n{o.error or ''}" for o in outcomes]
        super().__init__("ranks failed:\n" + "\n".join(lines))


def _entry(fn, rank, world_size, port, conn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    import torch

    torch.set_num_threads(1)
    code = 0
    try:
        payload = ("ok", fn(rank, world_size, *args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        payload = ("error", f"SystemExit({e.code})")
    except BaseException:  # noqa: BLE001 - report everything to the parent
        code = 1
        payload = ("error", traceback.format_exc())
    try:
        conn.send_bytes(pickle.dumps(payload))
    except Exception:  # noqa: BLE001 - unpicklable result
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
        code = code or 1
    conn.close()
    os._exit(code)


def run_ranks_outcomes(fn, world_size: int, *args, timeout: float = 300.0,
                       start_method: str = "fork") -> list[RankOutcome]:
    """Run the ranks and return each one's outcome (never raises for a failing rank)."""
    return collect_outcomes(*start_ranks(fn, world_size, *args, start_method=start_method), timeout=timeout)


def start_ranks(fn, world_size: int, *args, start_method: str = "fork") -> tuple[list, list]:
    """Start the ranks in the background: (processes, result pipes), for ``collect_outcomes``. Tests that signal
    or kill a rank while it runs use the processes' pids. ``spawn`` for ranks that use CUDA after the parent has."""
    ctx = mp.get_context(start_method)
    port = free_port()
    procs, pipes = [], []
    for rank in range(world_size):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_entry, args=(fn, rank, world_size, port, child, args), daemon=True)
        p.start()
        child.close()
        procs.append(p)
        pipes.append(parent)
    return procs, pipes


def collect_outcomes(procs: list, pipes: list, *, timeout: float = 300.0) -> list[RankOutcome]:
    """Wait for ranks from ``start_ranks`` (up to ``timeout`` each) and return each one's outcome."""
    outcomes = []
    for rank, (p, pipe) in enumerate(zip(procs, pipes)):
        payload = None
        if pipe.poll(timeout):
            try:
                payload = pickle.loads(pipe.recv_bytes())
            except EOFError:
                payload = None
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
            outcomes.append(RankOutcome(rank, None, error="hung: killed after the timeout"))
            continue
        status, value = payload if payload else ("error", "no result (process died)")
        outcomes.append(RankOutcome(rank, p.exitcode, value if status == "ok" else None,
                                    value if status == "error" else None))
    return outcomes


def run_ranks(fn, world_size: int, *args, timeout: float = 300.0, start_method: str = "fork") -> list:
    outcomes = run_ranks_outcomes(fn, world_size, *args, timeout=timeout, start_method=start_method)
    if any(o.exitcode != 0 for o in outcomes):
        raise RanksFailed(outcomes)
    return [o.result for o in outcomes]
