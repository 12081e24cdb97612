"""Rank 0's micro-batch planner: admits requests, builds each micro-batch, folds sampled tokens back.

Pure bookkeeping over ``Sequence`` objects: no tensors, no torch.distributed. A policy subclass decides
*which* tokens go into the next micro-batch (``_select``); this base class owns everything policies share:
arrivals, FCFS queues, KV-block reservation with preemption by recompute, stop conditions and timings.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

from pp_runtime.block_manager import BlockManager
from pp_runtime.config import SchedulerConfig
from pp_runtime.plan import MicroBatch, Piece
from pp_runtime.request import Request
from pp_runtime.sequence import Sequence, SeqStatus


class Planner:
    def __init__(self, cfg: SchedulerConfig, *, num_blocks: int, block_size: int, num_slots: int,
                 max_model_len: int, eos_token_ids: Iterable[int] = (), cost_model=None):
        self.cfg = cfg
        self.blocks = BlockManager(num_blocks, block_size)
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.cost_model = cost_model
        self.seqs: list[Sequence] = []
        self._future: list[tuple[float, int]] = []  # (arrival_s, seq_id), not yet arrived
        self.waiting: deque[Sequence] = deque()  # arrived, not admitted (FCFS; preempted go first)
        self.running: list[Sequence] = []  # admitted and holding KV blocks, in admission order
        self.finished: list[Sequence] = []
        self._next_mb_id = 0

    # ---- requests in -------------------------------------------------------------------------------------
    def add_request(self, req: Request) -> Sequence:
        """Queue a request; one that could never fit the KV cache, even alone, is finished as rejected."""
        seq = Sequence(len(self.seqs), req)
        self.seqs.append(seq)
        total = min(seq.prompt_len + req.params.max_tokens, self.max_model_len)
        if not self.blocks.fits_alone(total):
            bs = self.blocks.block_size
            seq.error = (f"request {req.id!r} needs {-(-total // bs)} KV blocks of {bs} tokens "
                         f"(prompt {seq.prompt_len} + max_tokens {req.params.max_tokens}) but the cache has "
                         f"{self.blocks.num_blocks}; raise cache.num_blocks or cache.memory_gib, or lower max_tokens")
            self._finish(seq, "rejected", req.arrival_s)
            return seq
        bisect.insort(self._future, (req.arrival_s, seq.seq_id))
        return seq

    def has_unfinished(self) -> bool:
        return len(self.finished) < len(self.seqs)

    def next_arrival_s(self) -> float | None:
        return self._future[0][0] if self._future else None

    def _release_arrivals(self, now: float) -> None:
        while self._future and self._future[0][0] <= now:
            _, sid = self._future.pop(0)
            self.waiting.append(self.seqs[sid])

    # ---- planning ----------------------------------------------------------------------------------------
    def schedule(self, now: float) -> MicroBatch | None:
        """The next micro-batch, or None when nothing can run now (all in flight, or nothing arrived)."""
        self._release_arrivals(now)
        work = self._select(now)
        if not work:
            return None
        pieces = []
        for seq, n in work:
            start = seq.num_computed
            seq.in_flight = True
            done_prefill = start + n == seq.num_tokens
            pieces.append(Piece(
                seq_id=seq.seq_id, start=start, token_ids=seq.token_ids(start, n),
                block_table=tuple(seq.block_table), is_prefill=seq.in_prefill, sample=done_prefill,
                params=seq.request.params, step=len(seq.output_token_ids)))
        mb = MicroBatch(self._next_mb_id, tuple(pieces))
        self._next_mb_id += 1
        return mb

    def _select(self, now: float) -> list[tuple[Sequence, int]]:
        """Policy hook: which sequences, and how many of their uncomputed tokens, go into the next micro-batch.

        Implementations must call ``_reserve`` (or ``_admit``) for every entry they return.
        """
        raise NotImplementedError

    # ---- helpers for policies ----------------------------------------------------------------------------
    def _schedulable(self) -> list[Sequence]:
        return [s for s in self.running if not s.in_flight]

    def _admit(self, seq: Sequence, num_tokens: int) -> bool:
        """Move the head of the waiting queue to running with ``num_tokens`` reserved, if the blocks are free.

        Admission never preempts: a new request waits for blocks instead of evicting a running one.
        """
        if len(self.running) >= self.cfg.max_num_seqs or not self.blocks.can_allocate(seq, num_tokens):
            return False
        self.waiting.remove(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        self.blocks.allocate(seq, num_tokens)
        return True

    def _reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Reserve blocks for ``num_tokens`` more tokens of running ``seq``, preempting if the cache is full.

        Preempts the most recently admitted running request that is not in flight (not ``seq`` itself);
        returns False if that is not enough, and the caller leaves ``seq`` for a later micro-batch.
        """
        while not self.blocks.can_allocate(seq, num_tokens):
            victim = next((s for s in reversed(self.running) if s is not seq and not s.in_flight), None)
            if victim is None or self.running.index(victim) < self.running.index(seq):
                return False
            self._preempt(victim)
        self.blocks.allocate(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Free a sequence's blocks and queue it first in line to be recomputed (prompt + outputs so far)."""
        self.blocks.free(seq)
        self.running.remove(seq)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.slot = -1
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)

    # ---- results back ------------------------------------------------------------------------------------
    def postprocess(self, mb: MicroBatch, sampled: list[int], now: float) -> list[Sequence]:
        """Fold a returned micro-batch's sampled tokens (one per sampling piece, in order) into its sequences."""
        if len(sampled) != mb.num_samples:
            raise RuntimeError(f"{mb!r} expected {mb.num_samples} sampled tokens, got {len(sampled)}")
        done = []
        it = iter(sampled)
        for piece in mb.pieces:
            seq = self.seqs[piece.seq_id]
            seq.in_flight = False
            seq.num_computed = piece.start + piece.num_tokens
            if not piece.sample:
                continue
            token = next(it)
            seq.output_token_ids.append(token)
            seq.token_times_s.append(now)
            if seq.first_token_s is None:
                seq.first_token_s = now
            reason = self._stop_reason(seq, token)
            if reason:
                self._finish(seq, reason, now)
                done.append(seq)
        return done

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.request.params
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        seq.finish_s = now
        self.finished.append(seq)
