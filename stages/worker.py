"""The loop of every stage but the first: receive a micro-batch, compute, pass it on (or sample and return).

The plan of each micro-batch comes from rank 0 ahead of its activations (``stages/transport.py``); before
computing one micro-batch the stage posts the activation receives of every plan already in, so the next input
travels while this one computes.
"""

from __future__ import annotations

from pp_runtime.trace.tracer import EventKind, Tracer
from stages.executor import StageExecutor
from stages.faults import Faults
from stages.transport import Transport


def serve(stage: int, executor: StageExecutor, transport: Transport, tracer: Tracer, faults: Faults) -> int:
    """Serve until rank 0's stop message; returns the number of micro-batches computed."""
    count = 0
    while (got := transport.recv_micro_batch()) is not None:
        mb, hidden = got  # hidden: [num_tokens, hidden]
        transport.post_ahead()
        with tracer.span(EventKind.COMPUTE, mb.id, mb.num_prefill_tokens, mb.num_decode_tokens):
            faults.on_compute(stage)
            out = executor.execute(mb, hidden)
        if executor.model.is_last:
            transport.send_tokens(mb.id, out.result())  # sampled token ids go back to stage 0
        else:
            transport.send_activation(mb.id, out)
        count += 1
    transport.flush()
    return count
