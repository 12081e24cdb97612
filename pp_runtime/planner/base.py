"""Rank 0's micro-batch planner: admits requests, builds each micro-batch, folds sampled tokens back.

Pure bookkeeping over ``Sequence`` objects: no tensors, no torch.distributed. A policy subclass decides
*which* tokens go into the next micro-batch (``_select``); this base class owns everything policies share:
arrivals, the FCFS queue, KV-block reservation with preemption by recompute, stop conditions and timings.

Every queue operation is O(1) or O(log n) so that planning a micro-batch costs time linear in the requests
it touches, not in the requests the job holds.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

from pp_runtime.config import SchedulerConfig
from pp_runtime.plan import MicroBatch, Piece
from pp_runtime.planner.block_manager import BlockManager
from pp_runtime.planner.cost_model import work as mb_work_of
from pp_runtime.request import Request
from pp_runtime.sequence import SeqStatus, Sequence


class Planner:
    # The per-micro-batch caps a policy cuts prefill chunks by (``fill.Limits``; sarathi's), which the slowdown's
    # alone estimate cuts them by too; None: chunks of the token budget.
    limits = None

    def __init__(self, cfg: SchedulerConfig, *, num_blocks: int, block_size: int, num_slots: int,
                 max_model_len: int, eos_token_ids: Iterable[int] = (), cost_model=None,
                 cache_keys: str = "cache.memory_gib or cache.num_blocks"):
        if num_slots < 1:
            raise ValueError(f"num_slots={num_slots} must be >= 1 (micro-batches in flight: pipeline.depth)")
        self.cfg = cfg
        self.blocks = BlockManager(num_blocks, block_size)
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.cost_model = cost_model
        self.cache_keys = cache_keys  # the keys that size the KV cache on the job's device, for advice
        self.seqs: list[Sequence] = []
        self._future: list[tuple[float, int]] = []  # heap of (arrival_s, seq_id), not yet arrived
        self.waiting: deque[Sequence] = deque()  # arrived, not admitted (FCFS; preempted go first)
        # Running requests admitted with prompt (or recompute) tokens left, in admission order (``_admit`` adds
        # them); pruned lazily of those done with their prefill, or no longer running.
        self._prefilling: dict[Sequence, None] = {}
        # Admitted and holding KV blocks, in admission order (a dict as an ordered set: O(1) removal).
        self.running: dict[Sequence, None] = {}
        self.finished: list[Sequence] = []
        self._next_mb_id = 0
        self._preempted_this_build = False
        self._decode_turn = 0
        self._tables: dict[int, tuple[int, ...]] = {}  # seq_id -> block table as last put into a piece
        self._admission_closed = False
        self.work_scheduled = 0  # tokens put into micro-batches so far (a clock for fair ordering)
        # Micro-batch id -> (tokens, attention pairs, decode context): what the cost model priced, kept to measure
        # its error against the trace (cost_model.prediction_error); only when there is a cost model.
        self.mb_work: dict[int, tuple[int, int, int]] = {}

    # ---- requests in -------------------------------------------------------------------------------------
    def add_request(self, req: Request) -> Sequence:
        """Queue a request; one that could never fit the KV cache, even alone, is finished as rejected."""
        seq = Sequence(len(self.seqs), req)
        self.seqs.append(seq)
        # The KV a request writes: every token but the last sampled one, which is never fed back.
        total = min(seq.prompt_len + req.params.max_tokens, self.max_model_len) - 1
        if not self.blocks.fits_alone(total):
            bs, nb = self.blocks.block_size, self.blocks.num_blocks
            # More stages hold fewer layers each, so a cache sized by memory holds more tokens; a set count does not.
            stages = "use more pipeline.stages, " if "cache.memory_gib" in self.cache_keys else ""
            seq.error = (f"request {req.id!r} needs {total} tokens of KV cache (prompt {seq.prompt_len} + max_tokens "
                         f"{req.params.max_tokens} - 1, the last token's KV is never written; at most "
                         f"model.max_model_len={self.max_model_len} - 1) but the cache holds {nb * bs} tokens "
                         f"({nb} block{'s' if nb != 1 else ''} of {bs}); raise {self.cache_keys}, "
                         f"{stages}or lower max_tokens")
            self._finish(seq, "rejected", req.arrival_s)
            return seq
        heapq.heappush(self._future, (req.arrival_s, seq.seq_id))
        return seq

    def close_admission(self) -> None:
        """Admit no more requests (a graceful stop): running ones go on, waiting ones stay waiting."""
        self._admission_closed = True

    def has_unfinished(self) -> bool:
        return len(self.finished) < len(self.seqs)

    def next_arrival_s(self) -> float | None:
        return self._future[0][0] if self._future else None

    def _release_arrivals(self, now: float) -> None:
        while self._future and self._future[0][0] <= now:
            _, sid = heapq.heappop(self._future)
            self.seqs[sid].arrival_work = self.work_scheduled
            self.waiting.append(self.seqs[sid])

    # ---- planning ----------------------------------------------------------------------------------------
    def schedule(self, now: float) -> MicroBatch | None:
        """The next micro-batch, or None when nothing can run now (all in flight, or nothing arrived)."""
        self._release_arrivals(now)
        self._preempted_this_build = False
        work = self._select(now)
        if not work:
            return None
        pieces = []
        for seq, n in work:
            start, total, out = seq.num_scheduled, seq.num_tokens, seq.output_token_ids  # hot loop: read once
            seq.tokens_in_flight += n
            # A decode carries the last sampled token: no need to slice prompt + outputs for it.
            decode = total - start == 1 and bool(out)
            pieces.append(Piece(
                seq_id=seq.seq_id, start=start, token_ids=(out[-1],) if decode else seq.token_ids(start, n),
                block_table=self._table(seq), is_prefill=not decode, sample=start + n == total,
                params=seq.request.params, step=len(out)))
        mb = MicroBatch(self._next_mb_id, tuple(pieces))
        self._next_mb_id += 1
        self.work_scheduled += mb.num_tokens
        if self.cost_model is not None:
            self.mb_work[mb.id] = mb_work_of(pieces)
        return mb

    def _select(self, now: float) -> list[tuple[Sequence, int]]:
        """Policy hook: which sequences, and how many of their uncomputed tokens, go into the next micro-batch.

        Every entry must come from a successful ``_reserve`` or ``_admit`` in this call: those hold the KV
        blocks and count the piece in flight, so that nothing later in the same build preempts it. A sequence
        appears at most once; its piece starts at ``seq.num_scheduled``.
        """
        raise NotImplementedError

    # ---- helpers for policies ----------------------------------------------------------------------------
    def _ready(self) -> list[Sequence]:
        """Running sequences not in flight, in admission order."""
        return [s for s in self.running if not s.in_flight]

    def _admit(self, seq: Sequence, num_tokens: int, *, take: bool = True) -> bool:
        """Move ``seq`` from the waiting queue to running with ``num_tokens`` reserved, if blocks are free.

        ``seq`` is the head of the queue (first come, first served) unless the policy orders admission otherwise
        (sarathi's fair prefill order looks a bounded window into the queue). Admission never preempts, and never
        happens in a build that preempted: the freed blocks are for the running requests, and readmitting a victim
        at once would only thrash; nor into the blocks that running requests which arrived before ``seq`` still need
        for their prompts (``_owed_to_elders``). ``take`` marks ``seq`` in flight (it goes into the micro-batch
        being built).
        """
        if (self._admission_closed or self._preempted_this_build or len(self.running) >= self.cfg.max_num_seqs
                or self.blocks.blocks_needed(seq, num_tokens) + self._owed_to_elders(seq) > self.blocks.num_free):
            return False
        if self.waiting[0] is seq:
            self.waiting.popleft()
        else:
            self.waiting.remove(seq)
        seq.status = SeqStatus.RUNNING
        self.running[seq] = None
        self._prefilling[seq] = None
        self.blocks.allocate(seq, num_tokens)
        seq.num_in_flight += take
        return True

    def _owed_to_elders(self, seq: Sequence) -> int:
        """Free blocks that running requests which arrived before ``seq`` still need for their prompt (or
        recompute): admitting ``seq`` into them would only have it preempted by their next chunks, readmitted,
        and preempted again."""
        age = arrival_order(seq)
        bs = self.blocks.block_size
        owed = 0
        for r in list(self._prefilling):
            if r.status is not SeqStatus.RUNNING or not r.in_prefill:
                del self._prefilling[r]
            elif arrival_order(r) < age:
                owed += max(0, -(-r.num_tokens // bs) - len(r.block_table))
        return owed

    def _reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Reserve blocks for ``num_tokens`` more tokens of running ``seq`` (after those already scheduled) and
        count one more piece of it in flight.

        If the cache is short, preempts running requests that arrived after ``seq`` and are not in flight, the
        latest arrival first, but only when that frees enough; otherwise preempts nothing and returns
        False, and the caller leaves ``seq`` for a later micro-batch. A request with a piece in flight is never
        preempted: its blocks are still being written. Who may preempt whom is arrival order, not admission
        order: a policy that admits a short prompt before a long one that came first (sarathi's fair order), or
        readmits a preempted request, must not make the earlier request the victim of the later one's growth, or a
        long prompt is evicted again and again.
        """
        if seq.num_scheduled + num_tokens <= len(seq.block_table) * self.blocks.block_size:
            seq.num_in_flight += 1  # fast path, most decodes: the last block has room
            return True
        short = self.blocks.blocks_needed(seq, num_tokens) - self.blocks.num_free
        if short > 0:
            victims = []
            # The latest arrival first: not the most recently admitted, which may be an early request readmitted
            # after an eviction (it would be evicted again and again).
            age = arrival_order(seq)
            younger = [v for v in self.running if not v.in_flight and arrival_order(v) > age]
            for victim in sorted(younger, key=arrival_order, reverse=True):
                victims.append(victim)
                short -= len(victim.block_table)
                if short <= 0:
                    break
            if short > 0:
                return False  # everyone younger is in flight or too small: wait for them to return
            for victim in victims:
                self._preempt(victim)
        self.blocks.allocate(seq, num_tokens)
        seq.num_in_flight += 1
        return True

    def _take_decodes(self, seqs: list[Sequence], room: int, work: list[tuple[Sequence, int]]) -> int:
        """Add one decode token for each decoding, not-in-flight sequence of ``seqs``, at most ``room``.

        Returns the tokens taken. When ``room`` is short, the start rotates from call to call so that every
        decode gets its turn. Sequences whose next block cannot be had are left for a later micro-batch.
        """
        k = self._decode_turn % len(seqs) if seqs else 0
        taken = 0
        for i, seq in enumerate(seqs[k:] + seqs[:k]):
            if taken >= room:
                self._decode_turn = k + i  # the next call starts with the first one left out
                break
            if not seq.in_flight and seq.status is SeqStatus.RUNNING and not seq.in_prefill and self._reserve(seq, 1):
                work.append((seq, 1))
                taken += 1
        return taken

    def _admit_whole_prompts(self, room: int, work: list[tuple[Sequence, int]]) -> None:
        """Admit waiting requests in FCFS order with their whole prompt (plus outputs, for a recompute) while
        they fit ``room``; the first one goes in regardless if ``work`` is still empty."""
        while self.waiting:
            seq = self.waiting[0]
            n = seq.num_uncomputed
            if (n > room and work) or not self._admit(seq, n):
                return
            work.append((seq, n))
            room -= n

    def _preempt(self, seq: Sequence) -> None:
        """Free a sequence's blocks and queue it first in line to be recomputed (prompt + outputs so far)."""
        if seq.in_flight:
            raise RuntimeError(f"{seq!r} has pieces in flight; preempting it would free KV blocks still being written")
        self._on_release(seq)
        self.blocks.free(seq)
        del self.running[seq]
        self._tables.pop(seq.seq_id, None)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.slot = -1
        seq.num_preemptions += 1
        self._preempted_this_build = True
        self.waiting.appendleft(seq)

    def _on_release(self, seq: Sequence) -> None:
        """Policy hook: ``seq`` leaves the running set (finished or preempted)."""

    def _table(self, seq: Sequence) -> tuple[int, ...]:
        # Block tables only grow between frees, so the cached tuple is rebuilt once per new block, not per piece.
        table = self._tables.get(seq.seq_id)
        if table is None or len(table) != len(seq.block_table):
            table = self._tables[seq.seq_id] = tuple(seq.block_table)
        return table

    # ---- results back ------------------------------------------------------------------------------------
    def postprocess(self, mb: MicroBatch, sampled: list[int], now: float) -> list[Sequence]:
        """Fold a returned micro-batch's sampled tokens (one per sampling piece, in order) into its sequences.

        Micro-batches must come back in launch order: a returned chunk must start where the cache ends.
        """
        if len(sampled) != mb.num_samples:
            raise RuntimeError(f"{mb!r} expected {mb.num_samples} sampled tokens, got {len(sampled)}")
        done = []
        it = iter(sampled)
        for piece in mb.pieces:
            seq = self.seqs[piece.seq_id]
            if piece.start != seq.num_computed:
                raise RuntimeError(f"{mb!r} came back out of order: {piece!r} starts at {piece.start} but {seq!r} "
                                   f"has {seq.num_computed} tokens in the cache")
            seq.num_in_flight -= 1
            seq.tokens_in_flight -= piece.num_tokens
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

    def alone_times(self, seq: Sequence, model=None) -> tuple[float, float]:
        """(TTFT, e2e) seconds ``seq`` would take alone on this planner's pipeline, by ``model`` (default: the
        planner's cost model); see ``planner/alone.py``."""
        from pp_runtime.planner.alone import alone_times

        return alone_times(model or self.cost_model, self.cfg, num_slots=self.num_slots, prompt_len=seq.prompt_len,
                           num_outputs=len(seq.output_token_ids), limits=self.limits)

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.request.params
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        if seq.status is SeqStatus.RUNNING:
            self._on_release(seq)
            del self.running[seq]
        self.blocks.free(seq)
        self._tables.pop(seq.seq_id, None)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        seq.finish_s = now
        self.finished.append(seq)


def arrival_order(seq: Sequence) -> tuple[float, int]:
    """Sort key of arrival (earlier first; ties by id): who may preempt whom, and who came after a prompt."""
    return seq.request.arrival_s, seq.seq_id
