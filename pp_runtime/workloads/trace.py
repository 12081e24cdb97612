"""Requests sampled from a CSV trace of request lengths (``workload=trace``), e.g. the Splitwise traces.

Columns: ``num_prefill_tokens``, ``num_decode_tokens`` and optionally ``arrived_at`` (seconds); other columns
are ignored. ``workload.num_requests`` rows are sampled by ``workload.seed`` (without replacement when the
file has enough rows), both lengths are multiplied by ``workload.length_scale`` (rounded, at least 1) and
prompts are random token ids. ``workload.arrival=trace`` replays ``arrived_at`` relative to the first
sampled row, with the requests in arrival order.
"""

from __future__ import annotations

import csv
import logging
import math
import os

import numpy as np

from pp_runtime.config import ConfigError, WorkloadConfig
from pp_runtime.request import Request, RequestError
from pp_runtime.workloads.arrivals import arrival_times
from pp_runtime.workloads.random_requests import SAMPLE, requests_from_lengths, rng

log = logging.getLogger(__name__)

_PREFILL, _DECODE, _ARRIVED = "num_prefill_tokens", "num_decode_tokens", "arrived_at"
# Where to get a trace in this format (the repository ships none): the Azure LLM inference traces 2023 as
# processed by microsoft/vidur (MIT; the data CC-BY 4.0).
TRACE_SOURCES = ("https://github.com/microsoft/vidur/tree/main/data/processed_traces "
                 "(splitwise_conv.csv, splitwise_code.csv)")


def load_trace(cfg: WorkloadConfig, *, max_model_len: int, vocab_size: int) -> list[Request]:
    """Sample ``cfg.num_requests`` requests from the trace at ``cfg.path``; ids ``trace-0``, ``trace-1``, ..."""
    prefill, decode, arrived = _read(cfg.path)
    if cfg.arrival == "trace" and arrived is None:
        raise ConfigError(f"workload.arrival='trace' needs an {_ARRIVED!r} column, which {cfg.path} lacks; "
                          f"use workload.arrival=all or poisson")
    rows = len(prefill)
    replace = cfg.num_requests > rows
    if replace:
        log.warning("trace %s has %d rows, fewer than workload.num_requests=%d: sampling with replacement",
                    cfg.path, rows, cfg.num_requests)
    idx = rng(cfg.seed, SAMPLE).choice(rows, size=cfg.num_requests, replace=replace)
    if cfg.arrival == "trace":
        idx = idx[np.argsort(arrived[idx], kind="stable")]
        arrivals = (arrived[idx] - arrived[idx[0]]).tolist()
    else:
        arrivals = arrival_times(cfg, len(idx))
    prompt_lens = np.maximum(1, np.rint(prefill[idx] * cfg.length_scale)).astype(int)
    output_lens = np.maximum(1, np.rint(decode[idx] * cfg.length_scale)).astype(int)
    return requests_from_lengths(prompt_lens.tolist(), output_lens.tolist(), arrivals, prefix="trace",
                                 seed=cfg.seed, max_model_len=max_model_len, vocab_size=vocab_size)


def _read(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(prefill lengths, decode lengths, arrival times or None), every row checked."""
    if not os.path.isfile(path):
        raise ConfigError(f"workload.path={path!r}: no such file; point it at a CSV trace with columns {_PREFILL}, "
                          f"{_DECODE} (and {_ARRIVED}), e.g. one from {TRACE_SOURCES}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise RequestError(f"{path}:1: the trace is empty; it needs a header with {_PREFILL} and {_DECODE}")
        header = [h.strip() for h in header]
        for col in (_PREFILL, _DECODE):
            if col not in header:
                raise RequestError(f"{path}:1: the header lacks column {col!r} (it has {', '.join(header)})")
        cols = {c: header.index(c) for c in (_PREFILL, _DECODE, _ARRIVED) if c in header}
        values: dict[str, list[float]] = {c: [] for c in cols}
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise RequestError(f"{where}: {len(row)} cells, but the header has {len(header)} columns")
            for col, i in cols.items():
                values[col].append(_number(row[i], where, col, lengths=col != _ARRIVED))
    if not values[_PREFILL]:
        raise RequestError(f"{path}: the trace has a header but no rows")
    arrived = np.array(values[_ARRIVED]) if _ARRIVED in cols else None
    return np.array(values[_PREFILL]), np.array(values[_DECODE]), arrived


def _number(cell: str, where: str, col: str, *, lengths: bool) -> float:
    try:
        x = float(cell)
    except ValueError:
        raise RequestError(f"{where}: column {col!r} holds {cell!r}, not a number") from None
    if not math.isfinite(x) or (lengths and x < 0):
        raise RequestError(f"{where}: column {col!r} holds {cell!r}; it must be a finite number"
                           + (" >= 0" if lengths else ""))
    return x
