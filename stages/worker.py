"""The loop of every stage but the first: receive a micro-batch, compute, pass it on (or sample and return)."""

from __future__ import annotations

from pp_runtime.trace.tracer import EventKind, Tracer
from stages.executor import StageExecutor
from stages.faults import Faults
from stages.transport import STOP, Transport


def serve(stage: int, executor: StageExecutor, transport: Transport, tracer: Tracer, faults: Faults) -> int:
    """Serve until the stop message comes round; returns the number of micro-batches computed."""
    count = 0
    while True:
        msg = transport.recv()
        if msg.kind == STOP:
            transport.send_stop()
            transport.flush()
            return count
        mb = msg.meta
        with tracer.span(EventKind.COMPUTE, mb.id, mb.num_prefill_tokens, mb.num_decode_tokens):
            faults.on_compute(stage)
            out = executor.execute(mb, msg.tensor)
        if executor.model.is_last:
            transport.send(mb.id, out.result())  # sampled token ids go back to stage 0
        else:
            transport.send(mb.id, mb, out)
        count += 1
