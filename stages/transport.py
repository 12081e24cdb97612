"""All point-to-point traffic between pipeline stages, over torch.distributed.

The stages form a ring: stage k sends each micro-batch's activations to stage k+1, and the last stage sends
the sampled token ids back to stage 0. A message is a fixed-size header (kind, micro-batch id, metadata
bytes, activation rows), the pickled metadata (the plan, or the sampled tokens) and, for activations, a
``[rows, hidden]`` tensor. Metadata up to ``_INLINE_BYTES`` travels inside the header's fixed-size buffer, whose
receive is posted in advance: each extra message costs gloo a rendezvous round trip between the two processes'
threads, several ms on a loaded CPU (the token return became one message instead of two). Headers and
metadata always travel over a gloo group on the CPU; activations over the default group: NCCL GPU to GPU
(``pipeline.transport=nccl``), or gloo (the CPU, and ``pipeline.transport=gloo`` on CUDA, where activations are
staged through pinned host memory so that several stages can share one GPU). Sends are asynchronous, and the
next header is received in the background while the stage computes.

Every wait has a timeout (``runtime.timeout_s``). A rank that fails writes its error into the job's store
(``report_failure``), so a peer that loses it can say which stage failed and why.
"""

from __future__ import annotations

import pickle
import struct
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pp_runtime.trace.tracer import EventKind, Tracer

DATA, STOP = 0, 1
_HEADER_LEN = 4  # kind, micro-batch id, metadata bytes, activation rows
_HEADER_BYTES = _HEADER_LEN * 8
_INLINE_BYTES = 16384  # header + metadata up to this size go as one message
_INLINE_DATA = _INLINE_BYTES - _HEADER_BYTES  # metadata that fits inside the header message
_ERROR_KEY = "pp_runtime/error"


class PipelineError(RuntimeError):
    """A stage failed, or a peer did not answer within runtime.timeout_s."""


@dataclass
class Message:
    kind: int
    mb_id: int
    meta: Any = None
    tensor: torch.Tensor | None = None


class Transport:
    def __init__(self, rank: int, world_size: int, *, device: torch.device, hidden_size: int, dtype: torch.dtype,
                 timeout_s: float, tracer: Tracer, cpu_group=None, host_staging: bool = False):
        self.rank, self.world_size = rank, world_size
        self.next, self.prev = (rank + 1) % world_size, (rank - 1) % world_size
        self.device, self.hidden_size, self.dtype = device, hidden_size, dtype
        self.timeout = timedelta(seconds=timeout_s)
        self.tracer = tracer
        self.cpu_group = cpu_group  # None: the default group (gloo on the CPU)
        self.data_group = None
        # CUDA activations over gloo: copied to pinned host memory to send, received there, copied back.
        self.host_staging = host_staging
        self._sends: deque[tuple[list, tuple]] = deque()  # (works, tensors kept alive until sent)
        self._header: torch.Tensor | None = None
        self._header_work = None

    # ---- sending -----------------------------------------------------------------------------------------
    def send(self, mb_id: int, meta: Any, tensor: torch.Tensor | None = None) -> None:
        """Send to the next stage without blocking: metadata (any picklable) and optionally ``[rows, hidden]``."""
        t0 = self.tracer.now_ns()
        data = pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL)
        rows = 0 if tensor is None else tensor.shape[0]
        header = _header_message(DATA, mb_id, data, rows)
        works = [dist.isend(header, self.next, group=self.cpu_group)]
        keep: tuple = (header,)
        if len(data) > _INLINE_DATA:
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            works.append(dist.isend(payload, self.next, group=self.cpu_group))
            keep += (payload,)
        if tensor is not None:
            tensor = tensor.contiguous()
            if self.host_staging:
                tensor = _to_pinned_host(tensor)
            works.append(dist.isend(tensor, self.next, group=self.data_group))
            keep += (tensor,)
        self._sends.append((works, keep))
        self._reap()
        self.tracer.record(EventKind.SEND, t0, self.tracer.now_ns(), mb_id)

    def send_stop(self) -> None:
        header = _header_message(STOP, -1, b"", 0)
        self._sends.append(([dist.isend(header, self.next, group=self.cpu_group)], (header,)))

    def _reap(self) -> None:
        while self._sends and all(w.is_completed() for w in self._sends[0][0]):
            self._sends.popleft()

    def flush(self) -> None:
        """Wait until every send has been received."""
        while self._sends:
            works, _ = self._sends.popleft()
            for w in works:
                self._wait(w, "send to", self.next)

    # ---- receiving ---------------------------------------------------------------------------------------
    def _post_header(self) -> None:
        self._header = torch.empty(_INLINE_BYTES, dtype=torch.uint8)
        self._header_work = dist.irecv(self._header, self.prev, group=self.cpu_group)

    def recv(self) -> Message:
        """Block (up to the timeout) for the next message from the previous stage; time blocked is a WAIT."""
        if self._header_work is None:
            self._post_header()
        t0 = self.tracer.now_ns()
        self._wait(self._header_work, "receive from", self.prev)
        kind, mb_id, nbytes, rows = self._header[:_HEADER_BYTES].view(torch.int64).tolist()
        self._header_work = None
        if kind == STOP:
            self.tracer.record(EventKind.WAIT, t0, self.tracer.now_ns())
            return Message(STOP, -1)
        works = []
        payload = None if nbytes <= _INLINE_DATA else torch.empty(nbytes, dtype=torch.uint8)
        if payload is not None:
            works.append(dist.irecv(payload, self.prev, group=self.cpu_group))
        tensor = None
        if rows:
            where = {"pin_memory": True} if self.host_staging else {"device": self.device}
            tensor = torch.empty(rows, self.hidden_size, dtype=self.dtype, **where)  # [rows, hidden]
            works.append(dist.irecv(tensor, self.prev, group=self.data_group))
        for w in works:
            self._wait(w, "receive from", self.prev)
        data = (self._header[_HEADER_BYTES:_HEADER_BYTES + nbytes] if payload is None else payload).numpy().tobytes()
        if tensor is not None and self.host_staging:
            # Asynchronous: the host allocator keeps the pinned buffer until the copy has run on the stream.
            tensor = tensor.to(self.device, non_blocking=True)
        self._post_header()  # the next header arrives while this micro-batch computes
        self.tracer.record(EventKind.WAIT, t0, self.tracer.now_ns(), mb_id)
        return Message(DATA, mb_id, pickle.loads(data), tensor)

    def _wait(self, work, what: str, peer: int) -> None:
        try:
            work.wait(self.timeout)
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise plain RuntimeErrors
            cause = failure_message()
            if cause:
                raise PipelineError(f"stage {self.rank}: aborting, {cause}") from exc
            raise PipelineError(f"stage {self.rank}: failed to {what} stage {peer} within runtime.timeout_s="
                                f"{self.timeout.total_seconds():g}s ({exc}); stage {peer} failed or hangs") from exc


def _header_message(kind: int, mb_id: int, data: bytes, rows: int) -> torch.Tensor:
    """The fixed-size first message: the header, then ``data`` when it fits (else it follows on its own)."""
    buf = bytearray(_INLINE_BYTES)
    struct.pack_into("=4q", buf, 0, kind, mb_id, len(data), rows)
    if len(data) <= _INLINE_DATA:
        buf[_HEADER_BYTES:_HEADER_BYTES + len(data)] = data
    return torch.frombuffer(buf, dtype=torch.uint8)  # [_INLINE_BYTES]
def _to_pinned_host(tensor: torch.Tensor) -> torch.Tensor:
    """A pinned host copy of a CUDA tensor, complete on return (gloo's send thread reads it right away)."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor)  # blocking: waits for the kernels that produce ``tensor``, then for the copy
    return host


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
