"""Per-stage event recorder: when each stage computed, sent, waited and planned, as rows of int64.

Recording must not disturb what it measures, so ``record`` writes one row of a preallocated buffer and does no
I/O; a full buffer drops events (counted in ``dropped``) rather than growing. On CUDA, compute spans are timed with
CUDA events, so a span covers when the GPU worked rather than when the host enqueued the kernels.
"""

from __future__ import annotations

import enum
import logging
import time

import numpy as np
import torch

log = logging.getLogger(__name__)

# Columns of an events array: kind, start_ns, end_ns, mb_id, prefill, decode.
NUM_FIELDS = 6


class EventKind(enum.IntEnum):
    COMPUTE = 0
    SEND = 1
    WAIT = 2
    PLAN = 3


class _Span:
    """Records ``[enter, exit]`` of a ``with`` block on the host clock."""

    __slots__ = ("_tracer", "_kind", "_mb_id", "_prefill", "_decode", "_start")

    def __init__(self, tracer: Tracer, kind: EventKind, mb_id: int, prefill: int, decode: int):
        self._tracer, self._kind, self._mb_id = tracer, kind, mb_id
        self._prefill, self._decode = prefill, decode

    def __enter__(self) -> _Span:
        self._start = time.monotonic_ns()
        return self

    def __exit__(self, *exc) -> None:
        self._tracer.record(self._kind, self._start, time.monotonic_ns(), self._mb_id, self._prefill, self._decode)


class _CudaSpan:
    """Records a compute span as a pair of CUDA events, resolved to host time in ``Tracer.events``."""

    __slots__ = ("_tracer", "_mb_id", "_prefill", "_decode", "_start")

    def __init__(self, tracer: Tracer, mb_id: int, prefill: int, decode: int):
        self._tracer, self._mb_id, self._prefill, self._decode = tracer, mb_id, prefill, decode

    def __enter__(self) -> _CudaSpan:
        self._start = torch.cuda.Event(enable_timing=True)
        self._start.record(torch.cuda.current_stream(self._tracer.device))
        return self

    def __exit__(self, *exc) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(self._tracer.device))
        self._tracer._record_cuda(self._start, end, self._mb_id, self._prefill, self._decode)


class _NoSpan:
    """The span of a disabled tracer: one shared instance, so a disabled ``span`` allocates nothing."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc) -> None:
        return None


_NO_SPAN = _NoSpan()


class Tracer:
    """Event buffer of one pipeline stage; ``events()`` exports it on the reference clock (rank 0's)."""

    def __init__(self, stage: int, *, capacity: int = 200_000, enabled: bool = True,
                 device: torch.device | None = None):
        if capacity <= 0:
            raise ValueError(f"Tracer capacity={capacity} must be positive: raise it, or pass enabled=False")
        self.stage = stage
        self.capacity = capacity
        self.enabled = enabled
        self.device = torch.device(device) if device is not None else None
        self._buf = np.zeros((capacity if enabled else 0, NUM_FIELDS), dtype=np.int64)
        self._n = 0
        self._dropped = 0
        self._offset_ns = 0
        self._error_ns = 0
        self._cuda = enabled and self.device is not None and self.device.type == "cuda"
        if self._cuda:
            # Row index -> (start, end) CUDA events; rows timed on the host hold None.
            self._cuda_events: list[tuple[torch.cuda.Event, torch.cuda.Event] | None] = [None] * capacity
            self._ref_event, self._ref_host_ns = self._reference_event()

    def _reference_event(self) -> tuple[torch.cuda.Event, int]:
        # With the device idle, the reference event completes as soon as it is recorded, so the host times
        # around record+synchronize bracket it; their midpoint is its host time.
        torch.cuda.synchronize(self.device)
        ref = torch.cuda.Event(enable_timing=True)
        before = time.monotonic_ns()
        ref.record(torch.cuda.current_stream(self.device))
        ref.synchronize()
        after = time.monotonic_ns()
        return ref, (before + after) // 2

    def now_ns(self) -> int:
        """Host monotonic time in ns, the clock ``record`` expects."""
        return time.monotonic_ns()

    def record(self, kind: EventKind, start_ns: int, end_ns: int, mb_id: int = -1, prefill: int = 0,
               decode: int = 0) -> None:
        """Append one event; a no-op when disabled; counted in ``dropped`` when the buffer is full."""
        if not self.enabled:
            return
        n = self._n
        if n >= self.capacity:
            self._drop()
            return
        self._buf[n] = (kind, start_ns, end_ns, mb_id, prefill, decode)
        self._n = n + 1

    def _record_cuda(self, start: torch.cuda.Event, end: torch.cuda.Event, mb_id: int, prefill: int,
                     decode: int) -> None:
        n = self._n
        if n >= self.capacity:
            self._drop()
            return
        # Timestamps stay 0 until events() resolves the CUDA events (resolving here would synchronize).
        self._buf[n] = (EventKind.COMPUTE, 0, 0, mb_id, prefill, decode)
        self._cuda_events[n] = (start, end)
        self._n = n + 1

    def _drop(self) -> None:
        if self._dropped == 0:
            log.warning("stage %d tracer is full (%d events): later events are dropped; raise the tracer "
                        "capacity to keep them", self.stage, self.capacity)
        self._dropped += 1

    def span(self, kind: EventKind, mb_id: int = -1, prefill: int = 0, decode: int = 0):
        """Context manager recording the ``with`` block as one event (GPU time for compute on CUDA)."""
        if not self.enabled:
            return _NO_SPAN
        if self._cuda and kind == EventKind.COMPUTE:
            return _CudaSpan(self, mb_id, prefill, decode)
        return _Span(self, kind, mb_id, prefill, decode)

    def set_clock_offset(self, offset_ns: int, error_ns: int) -> None:
        """Set the shift from this process's clock to the reference clock, applied by ``events()``."""
        self._offset_ns, self._error_ns = int(offset_ns), int(error_ns)

    @property
    def clock_offset_ns(self) -> int:
        return self._offset_ns

    @property
    def clock_error_ns(self) -> int:
        return self._error_ns

    @property
    def dropped(self) -> int:
        """Events lost because the buffer was full."""
        return self._dropped

    def __len__(self) -> int:
        return self._n

    def events(self) -> np.ndarray:
        """The recorded events, ``[n, 6]`` int64 (kind, start_ns, end_ns, mb_id, prefill, decode), sorted by start,
        on the reference clock. On CUDA this waits for the recorded GPU work to finish."""
        out = self._buf[: self._n].copy()  # [n, 6]
        if self._cuda:
            self._resolve_cuda(out)
        out[:, 1:3] += self._offset_ns
        return out[np.argsort(out[:, 1], kind="stable")]

    def _resolve_cuda(self, out: np.ndarray) -> None:
        for row in range(self._n):
            pair = self._cuda_events[row]
            if pair is None:
                continue
            start, end = pair
            end.synchronize()
            # elapsed_time is in ms (float); the reference event maps GPU time onto the host clock.
            out[row, 1] = self._ref_host_ns + round(self._ref_event.elapsed_time(start) * 1e6)
            out[row, 2] = self._ref_host_ns + round(self._ref_event.elapsed_time(end) * 1e6)
