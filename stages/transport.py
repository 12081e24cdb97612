"""All point-to-point traffic between pipeline stages, over torch.distributed; every receive posted ahead.

Three kinds of message, each on its own channel, none waiting for a rendezvous that could have happened earlier:

- **plans**: rank 0 sends each micro-batch's plan (the pickled ``MicroBatch``) to every other stage as soon as
  it is decided, before stage 0 computes it, over a gloo group for small messages (``control_group``). Each
  stage has a fixed-size receive (``_INLINE_BYTES``: header and plan) always posted, waited on by a background
  thread (``_PlanInbox``) that hands plans to the stage in order; a larger plan follows its header as a second
  message.
- **activations**: stage k-1 sends stage k only the ``[num_tokens, hidden]`` tensor: its size comes from the
  plan, so stage k posts the receive as soon as the plan is there, and before computing the current
  micro-batch it posts the receives of every plan already in (``post_ahead``: double buffers, more with
  depth > 2; over NCCL too); over gloo, when no plan is in yet, it posts
  one receive as large as any micro-batch (``max_rows``; gloo takes a shorter message into it), so the next
  activations never wait for this stage to finish.
  Over the default group: NCCL GPU to GPU (``pipeline.transport=nccl``), or gloo (the CPU, and
  ``pipeline.transport=gloo`` on CUDA, where activations are staged through pinned host memory so that several
  stages can share one GPU).
- **tokens**: the last stage sends ``[mb_id, *sampled ids]`` (int64) to rank 0, which posted that receive when
  it launched the micro-batch (the plan says how many ids); with a vocabulary-parallel LM head, its half of the
  head instead (``HeadSplit.pack``: ids, scores and normed rows, sized from the plan too). Over the control group
  too: small messages never queue behind an activation on one connection (a 2-stage run sends both between the
  same two ranks).

Sends never block: they are posted and completed lazily (at most ``_MAX_SENDS`` outstanding, then the oldest is
waited for; ``flush`` waits for all). On host-staged CUDA, the copy to pinned memory is asynchronous and its send
is posted once the copy has run: the host does not wait for the GPU when it sends, only before it would block
anyway. Every wait honours ``runtime.timeout_s``: gloo waits take the timeout, NCCL works are polled (their own
``wait`` only orders streams, and a dead peer would end the process through NCCL's watchdog instead). A rank
that fails writes its error into the job's store (``report_failure``), so a peer that loses it names the
stage that failed and why.
"""

from __future__ import annotations

import pickle
import queue
import struct
import threading
import time
from collections import deque
from datetime import timedelta

import torch
import torch.distributed as dist

from pp_runtime.plan import MicroBatch
from pp_runtime.trace.tracer import EventKind, Tracer
from stages.vocab_parallel import HeadSplit

DATA, STOP, ABORT = 0, 1, 2
_ACT, _TOKENS, _PLAN = 0, 1, 2  # gloo tags (NCCL matches by order alone)
_HEADER_LEN = 3  # kind, micro-batch id, plan bytes
_HEADER_BYTES = _HEADER_LEN * 8
_INLINE_BYTES = 16384  # header + plan up to this size go as one message
_INLINE_DATA = _INLINE_BYTES - _HEADER_BYTES  # plan bytes that fit inside the header message
_MAX_SENDS = 16  # sends outstanding before the oldest is waited for (it was received long ago)
_ERROR_KEY = "pp_runtime/error"


class PipelineError(RuntimeError):
    """A stage failed, or a peer did not answer within runtime.timeout_s."""


class Transport:
    """One rank's end of the pipeline. Rank 0 uses ``send_plan``, ``send_activation``, ``post_tokens`` /
    ``wait_tokens`` and ``send_stop``; every other stage ``recv_micro_batch``, ``post_ahead`` and
    ``send_activation`` or, the last, ``send_tokens``; all ``flush`` at the end."""

    def __init__(self, rank: int, world_size: int, *, device: torch.device, hidden_size: int, dtype: torch.dtype,
                 timeout_s: float, tracer: Tracer, cpu_group=None, control_group=None, host_staging: bool = False,
                 max_rows: int = 0, head_split: HeadSplit | None = None):
        self.rank, self.world_size = rank, world_size
        self.next, self.prev, self.last = (rank + 1) % world_size, (rank - 1) % world_size, world_size - 1
        self.device, self.hidden_size, self.dtype = device, hidden_size, dtype
        self.timeout_s = timeout_s
        self.tracer = tracer
        self.cpu_group = cpu_group  # None: the default group (gloo on the CPU)
        self.control_group = control_group  # plans, stop, tokens; None: the CPU group
        self.data_group = None  # the default group
        self._nccl = dist.get_backend(self.data_group) == "nccl"
        # CUDA activations over gloo: copied to pinned host memory to send, received there, copied back.
        self.host_staging = host_staging
        self.max_rows = max_rows  # the most tokens a micro-batch can hold; 0: post receives only for known plans
        self.head_split = head_split  # the last stage sends its half of a split LM head, not token ids
        self._sends: deque[tuple[object, str, int, bool, object]] = deque()  # (work, what, peer, poll, tensor)
        self._staged: deque[tuple[torch.cuda.Event, torch.Tensor, int]] = deque()  # copies to host not yet sent
        self._inbox: _PlanInbox | None = None
        # Activation receives posted: [plan (None: posted before it arrived), work, buffer].
        self._posted: deque[list] = deque()
        self._stopped = False
        self._abort_cause: str | None = None  # why rank 0 aborted the job, as its abort message said
        self._aborted = threading.Event()

    # ---- rank 0 ------------------------------------------------------------------------------------------
    def send_plan(self, mb: MicroBatch) -> None:
        """Send ``mb``'s plan to every other stage without blocking (rank 0, as soon as it is decided)."""
        t0 = self.tracer.now_ns()
        data = pickle.dumps(mb, protocol=pickle.HIGHEST_PROTOCOL)
        header = _header_message(DATA, mb.id, data)
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) > _INLINE_DATA else None
        for stage in range(1, self.world_size):
            self._isend(header, stage, self._control(), _PLAN, "send a plan to")
            if payload is not None:
                self._isend(payload, stage, self._control(), _PLAN, "send a plan to")
        self.tracer.record(EventKind.SEND, t0, self.tracer.now_ns(), mb.id)

    def post_tokens(self, mb: MicroBatch) -> tuple[MicroBatch, object, torch.Tensor]:
        """Post the receive of ``mb``'s sampled ids (or, with a split head, the last stage's half of the head) from
        the last stage; ``wait_tokens`` takes what this returns."""
        if self.head_split is not None:
            buf = torch.empty(self.head_split.message_bytes(mb), dtype=torch.uint8)
        else:
            buf = torch.empty(1 + sum(p.sample for p in mb.pieces), dtype=torch.int64)  # [1 + S]: mb id, ids
        return mb, dist.irecv(buf, self.last, group=self._control(), tag=_TOKENS), buf

    def wait_tokens(self, posted: tuple[MicroBatch, object, torch.Tensor]) -> list[int] | torch.Tensor:
        """Block (up to the timeout) for what ``post_tokens`` asked for; time blocked is a WAIT. Returns the sampled
        ids, or with a split head the last stage's message (uint8, ``HeadSplit.unpack`` reads it)."""
        mb, work, buf = posted
        t0 = self.tracer.now_ns()
        self._drain_staged()
        self._wait(work, "receive tokens from", self.last)
        self.tracer.record(EventKind.WAIT, t0, self.tracer.now_ns(), mb.id)
        got_id = int(buf[:8].view(torch.int64)[0]) if buf.dtype == torch.uint8 else int(buf[0])
        if got_id != mb.id:
            raise PipelineError(f"stage 0 expected tokens of micro-batch {mb.id}, got those of {got_id}")
        return buf if self.head_split is not None else buf[1:].tolist()

    def send_stop(self) -> None:
        """Tell every other stage that no plan follows (they finish what they hold, then stop)."""
        header = _header_message(STOP, -1, b"")
        for stage in range(1, self.world_size):
            self._isend(header, stage, self._control(), _PLAN, "send the stop message to")

    def abort(self, cause: str) -> None:
        """Rank 0 fails: tell every other stage why, and give the messages a moment to leave before this rank
        exits with the job's store (a stage waiting on rank 0 could not read the cause from it any more)."""
        header = _header_message(ABORT, -1, pickle.dumps(cause[:_INLINE_DATA // 8]))  # fits the header
        works = []
        for stage in range(1, self.world_size):
            try:
                works.append(dist.isend(header, stage, group=self._control(), tag=_PLAN))
            except Exception:  # noqa: BLE001 - that stage is gone already
                pass
        for work in works:
            try:
                work.wait(timedelta(seconds=min(self.timeout_s, 2.0)))
            except Exception:  # noqa: BLE001 - it failed or hangs: its own wait will time out
                pass

    # ---- every stage -------------------------------------------------------------------------------------
    def send_activation(self, mb_id: int, tensor: torch.Tensor) -> None:
        """Send ``[num_tokens, hidden]`` to the next stage without blocking."""
        t0 = self.tracer.now_ns()
        tensor = tensor.contiguous()
        if self.host_staging:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._staged.append((done, host, mb_id))
            self._post_staged(block=False)
        else:
            self._isend(tensor, self.next, self.data_group, _ACT, "send activations to")
        self.tracer.record(EventKind.SEND, t0, self.tracer.now_ns(), mb_id)

    def send_tokens(self, mb_id: int, payload: list[int] | torch.Tensor) -> None:
        """The last stage: send the sampled ids (or, with a split head, the packed message that starts with
        ``mb_id``) to stage 0 without blocking."""
        t0 = self.tracer.now_ns()
        if not isinstance(payload, torch.Tensor):
            payload = torch.tensor([mb_id, *payload], dtype=torch.int64)
        self._isend(payload, 0, self._control(), _TOKENS, "send tokens to")
        self.tracer.record(EventKind.SEND, t0, self.tracer.now_ns(), mb_id)

    def recv_micro_batch(self) -> tuple[MicroBatch, torch.Tensor] | None:
        """The next micro-batch's plan and ``[num_tokens, hidden]`` input, or None after the stop message.
        Blocks (up to the timeout) for what has not arrived; time blocked is a WAIT."""
        t0 = self.tracer.now_ns()
        self._drain_staged()
        while (not self._posted or self._posted[0][0] is None) and not self._stopped:
            self._take_plan(block=True)
        if not self._posted or self._posted[0][0] is None:
            self.tracer.record(EventKind.WAIT, t0, self.tracer.now_ns())
            return None  # a receive posted ahead stays unmatched: nothing waits on it
        mb, work, buf = self._posted.popleft()
        self._wait(work, "receive activations from", self.prev, poll=self._nccl)
        buf = buf[:mb.num_tokens]  # a receive posted before its plan was there is as large as any micro-batch
        if self.host_staging:
            # Asynchronous: the host allocator keeps the pinned buffer until the copy has run on the stream.
            buf = buf.to(self.device, non_blocking=True)
        self.tracer.record(EventKind.WAIT, t0, self.tracer.now_ns(), mb.id)
        return mb, buf

    def post_ahead(self) -> None:
        """Before computing the current micro-batch: post the activation receive of every plan that has arrived
        and, over gloo, if none has, one receive as large as any micro-batch (gloo takes a shorter message), so
        the next activations can travel while this stage computes.

        Over NCCL only receives of plans already in: a receive must match its send's size, and a plan in means
        rank 0 has launched that micro-batch, so every stage upstream will send it whatever this stage does next.
        A receive for a micro-batch not launched yet could, on an NCCL stream shared with this stage's send,
        hold that send up until an input arrives that waits for the very send."""
        while not self._stopped and self._take_plan(block=False):
            pass
        if not self._posted and not self._stopped and self.max_rows and not self._nccl:
            self._post_activation(None, self.max_rows)

    def flush(self) -> None:
        """Wait until every send has been received."""
        self._post_staged(block=True)
        while self._sends:
            self._wait_send()
        if self._inbox is not None:
            self._inbox.join()

    # ---- internals ---------------------------------------------------------------------------------------
    def _control(self):
        return self.control_group if self.control_group is not None else self.cpu_group

    def _take_plan(self, *, block: bool) -> bool:
        """Take the next plan from the inbox and post its activation receive; False if none is there yet."""
        if self._inbox is None:
            self._inbox = _PlanInbox(self)
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            if block:
                raise self._error(f"receive a plan from stage 0 within runtime.timeout_s={self.timeout_s:g}s",
                                  0) from None
            return False
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self._stopped = True
            return False
        if self._posted and self._posted[0][0] is None:  # the receive posted ahead is this plan's
            if item.num_tokens > self.max_rows:
                raise PipelineError(f"stage {self.rank}: micro-batch {item.id} has {item.num_tokens} tokens, more "
                                    f"than the {self.max_rows} rows its receive was posted for")
            self._posted[0][0] = item
        else:
            self._post_activation(item, item.num_tokens)
        return True

    def _post_activation(self, mb: MicroBatch | None, rows: int) -> None:
        where = {"pin_memory": True} if self.host_staging else {"device": self.device}
        buf = torch.empty(rows, self.hidden_size, dtype=self.dtype, **where)  # [rows, hidden]
        work = dist.irecv(buf, self.prev, group=self.data_group, tag=0 if self._nccl else _ACT)
        self._posted.append([mb, work, buf])

    def _isend(self, tensor: torch.Tensor, peer: int, group, tag: int, what: str) -> None:
        nccl = group is self.data_group and self._nccl
        self._sends.append((dist.isend(tensor, peer, group=group, tag=0 if nccl else tag), what, peer, nccl, tensor))
        if len(self._sends) > _MAX_SENDS:
            self._wait_send()

    def _wait_send(self) -> None:
        work, what, peer, poll, _ = self._sends.popleft()
        self._wait(work, what, peer, poll=poll)

    def _post_staged(self, *, block: bool) -> None:
        """Post the sends of host copies that have run (all of them, waiting for the GPU, if ``block``)."""
        while self._staged and (block or self._staged[0][0].query()):
            done, host, _ = self._staged.popleft()
            done.synchronize()
            self._isend(host, self.next, self.data_group, _ACT, "send activations to")

    def _drain_staged(self) -> None:
        """Before this rank blocks: let every staged send go, so no peer waits on a copy this rank holds."""
        if self._staged:
            self._post_staged(block=True)

    def _wait(self, work, what: str, peer: int, *, poll: bool = False) -> None:
        """Wait for ``work`` up to runtime.timeout_s; a failure or timeout raises PipelineError naming the stage.
        ``poll``: an NCCL work, whose own ``wait`` neither blocks the host nor times out."""
        try:
            if poll:
                start = time.monotonic()
                pause, checked = 1e-6, start
                while not work.is_completed():
                    now = time.monotonic()
                    if now - start > self.timeout_s:
                        raise TimeoutError("timed out")
                    if now - checked > 1.0:  # a failed peer never completes the transfer: ask the store
                        checked = now
                        if cause := failure_message():
                            raise PipelineError(f"stage {self.rank}: aborting, {cause}")
                    time.sleep(pause)
                    pause = min(pause * 2, 1e-4)  # a GPU hop takes tens of microseconds: poll finely
                work.wait()  # orders this rank's current stream after the transfer
            else:
                work.wait(timedelta(seconds=self.timeout_s))
        except PipelineError:
            raise
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise plain RuntimeErrors
            raise self._error(f"{what} stage {peer} within runtime.timeout_s={self.timeout_s:g}s ({exc})",
                              peer) from exc

    def _error(self, what: str, peer: int) -> PipelineError:
        cause = failure_message()
        if cause is None and self._inbox is not None and threading.current_thread() is not self._inbox.thread:
            # The job's store may have gone with rank 0; its abort message may still be on its way.
            self._aborted.wait(1.0)
            cause = self._abort_cause
        if cause:
            return PipelineError(f"stage {self.rank}: aborting, {cause}")
        return PipelineError(f"stage {self.rank}: failed to {what}; stage {peer} failed or hangs")


class _PlanInbox:
    """A thread that keeps one plan receive from rank 0 posted and hands the plans over in order: a plan is
    there before the stage is ready for it, whatever the stage is doing. Puts None after the stop message, or
    the error that ended it."""

    def __init__(self, transport: Transport):
        self._t = transport
        self._queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"plans-stage{transport.rank}", daemon=True)
        self.thread.start()

    def get(self, *, block: bool):
        return self._queue.get(block=block, timeout=self._t.timeout_s if block else None)

    def join(self) -> None:
        self.thread.join(self._t.timeout_s)

    def _run(self) -> None:
        t = self._t
        try:
            while True:
                header = torch.empty(_INLINE_BYTES, dtype=torch.uint8)
                t._wait(dist.irecv(header, 0, group=t._control(), tag=_PLAN), "receive a plan from", 0)
                kind, mb_id, nbytes = header[:_HEADER_BYTES].view(torch.int64).tolist()
                if kind == STOP:
                    self._queue.put(None)
                    return
                if kind == ABORT:
                    t._abort_cause = pickle.loads(header[_HEADER_BYTES:_HEADER_BYTES + nbytes].numpy().tobytes())
                    t._aborted.set()
                    self._queue.put(PipelineError(f"stage {t.rank}: aborting, {t._abort_cause}"))
                    return
                if nbytes <= _INLINE_DATA:
                    data = header[_HEADER_BYTES:_HEADER_BYTES + nbytes]
                else:
                    data = torch.empty(nbytes, dtype=torch.uint8)
                    t._wait(dist.irecv(data, 0, group=t._control(), tag=_PLAN), "receive a plan from", 0)
                self._queue.put(pickle.loads(data.numpy().tobytes()))
        except BaseException as exc:  # noqa: BLE001 - handed to the stage's own thread, which raises it
            self._queue.put(exc)


def _header_message(kind: int, mb_id: int, data: bytes) -> torch.Tensor:
    """The fixed-size first message: the header, then ``data`` when it fits (else it follows on its own)."""
    buf = bytearray(_INLINE_BYTES)
    struct.pack_into("=3q", buf, 0, kind, mb_id, len(data))
    if len(data) <= _INLINE_DATA:
        buf[_HEADER_BYTES:_HEADER_BYTES + len(data)] = data
    return torch.frombuffer(buf, dtype=torch.uint8)  # [_INLINE_BYTES]


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no process group, or the store is gone
        return None


def store_get(key: str) -> str | None:
    """The value of ``key`` in the job's store, or None: not set, no process group, or the store is gone."""
    store = _store()
    try:
        return store.get(key).decode() if store is not None and store.check([key]) else None
    except Exception:  # noqa: BLE001 - the store went away with rank 0
        return None


def store_set_once(key: str, value: str) -> bool:
    """Set ``key`` unless it is set already (the first writer wins); False when there is no store to write to."""
    store = _store()
    if store is None:
        return False
    try:
        store.compare_set(key, "", value)
    except Exception:  # noqa: BLE001 - the store itself may be gone with the failing rank
        return False
    return True


def report_failure(stage: int, exc: BaseException) -> None:
    """Record the first failure in the job's store so every other stage can name it."""
    store_set_once(_ERROR_KEY, f"stage {stage} failed: {type(exc).__name__}: {exc}")


def failure_message() -> str | None:
    return store_get(_ERROR_KEY)
