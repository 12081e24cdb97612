"""The links between simulated pipeline stages: how long a hop takes for a number of bytes.

A hop costs the sender ``send_s`` of its own time (pickling the plan, posting the sends: the SEND span of a real
run), then ``latency + bytes / bandwidth`` until the receiver has it. Stage s sends a micro-batch's activations
(``num_tokens x hidden x dtype bytes``) to stage s+1; the last stage returns the sampled token ids to stage 0 (a
few bytes: latency only). Which kind of link a hop uses follows from where the stages sit: stage s is on node
``s // gpus_per_node``.

When the transfer can start is a property of the runtime, not of the wire. An *eager* hop starts at once and the
data waits at a busy receiver (the textbook pipeline). A *rendezvous* hop starts only once the receiver is free
too. pp-runtime's stages post their receives ahead (``stages/transport.py``, issue 14): rank 0 sends every
micro-batch's plan to every stage before stage 0 computes it, and a stage posts the next activation receive
before computing the current micro-batch, so the presets are eager (``sim.rendezvous=false``); set
``sim.rendezvous=true`` for a runtime that posts its receives only after computing (pp-runtime before issue 14:
every hop's latency then lands on the critical path of every micro-batch). The sender's ``send_s`` stands for
all its send calls of one micro-batch (on rank 0: the plan to every stage and the activations).

Preset numbers (one direction), and where they come from:

- nvlink: H100 450 GB/s (NVLink 4, "900 GB/s" in NVIDIA's H100 datasheet counts both directions), A100 300 GB/s
  (NVLink 3, "600 GB/s" both directions); 10 us per message (assumption: NCCL point-to-point send/recv of a small
  message within a node takes a few to ~10 us including the kernel launch).
- pcie: H100 50 GB/s (PCIe Gen5 x16: 64 GB/s raw, ~80% achievable), A100 25 GB/s (Gen4 x16: 32 raw); 15 us
  (assumption: a staged copy through host or switch adds to NVLink's latency).
- infiniband: H100 50 GB/s (one ConnectX-7 NDR 400 Gb/s per GPU, as in DGX H100), A100 25 GB/s (ConnectX-6 HDR
  200 Gb/s per GPU, DGX A100); 20 us (assumption: NCCL's network proxy dominates the ~2 us wire latency).
- gloo (loopback TCP between processes of one machine, how CPU runs of pp-runtime talk): 200 us and 1.5 GB/s,
  measured on this project's 2-core shared VM as the median round trip of a header + metadata + activation
  message as stages.transport sends it (~450 us for 64 x 576 float32 rows including the reply, ~2 ms for 1024
  rows); noisy, and a loaded machine is slower. Its send overhead, 300 us, is the median SEND span of a
  2-stage SmolLM2 run on this VM (0.28-0.35 ms); the GPU presets charge no send overhead (assumption: a tuned
  runtime overlaps it; set sim.link_send_overhead_us to charge one). Under load these grow: replays of 2- and
  3-stage runs taken at a load average of ~9 on this 2-core VM fitted 3-11 ms per hop and 2-6 ms per send
  (``pp-sim --replay`` fits them per run; set sim.link_latency_us / sim.link_send_overhead_us to match a machine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GB = 1e9

# kind -> gpu -> (bandwidth bytes/s, latency s); gloo does not depend on the GPU. Send overheads per kind below.
_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "nvlink": {"h100": (450 * GB, 10e-6), "a100": (300 * GB, 10e-6)},
    "pcie": {"h100": (50 * GB, 15e-6), "a100": (25 * GB, 15e-6)},
    "infiniband": {"h100": (50 * GB, 20e-6), "a100": (25 * GB, 20e-6)},
    "gloo": {"h100": (1.5 * GB, 200e-6), "a100": (1.5 * GB, 200e-6)},
}
_SEND_S = {"nvlink": 0.0, "pcie": 0.0, "infiniband": 0.0, "gloo": 300e-6}
# GPU presets whose links are another's: the H200 has the H100's NVLink 4, PCIe 5 and network; the 40 GB A100 the
# 80 GB one's.
_LINK_FAMILY = {"h200": "h100", "a100-40gb": "a100"}


@dataclass(frozen=True)
class Link:
    """One hop: its kind (for reports), bandwidth in bytes per second (inf: free), latency in seconds, the
    seconds the sender spends on each send (its thread is busy, then the transfer starts), and whether the transfer
    waits for the receiver to be free (rendezvous) or starts at once (eager)."""

    kind: str
    bandwidth_Bps: float
    latency_s: float
    send_s: float = 0.0
    rendezvous: bool = False

    def transfer_s(self, nbytes: float) -> float:
        """Seconds for ``nbytes`` to cross this hop."""
        return self.latency_s + (nbytes / self.bandwidth_Bps if math.isfinite(self.bandwidth_Bps) else 0.0)


@dataclass(frozen=True)
class LinkModel:
    """``hops[s]`` carries activations from stage s to s+1 (N-1 hops); ``back`` returns tokens to stage 0."""

    hops: tuple[Link, ...]
    back: Link

    @classmethod
    def uniform(cls, num_stages: int, *, latency_s: float = 0.0, bandwidth_Bps: float = math.inf,
                send_s: float = 0.0, rendezvous: bool = False, kind: str = "ideal") -> LinkModel:
        """Every hop (and the return) alike; the default is a free eager link (no latency, infinite bandwidth)."""
        link = Link(kind, bandwidth_Bps, latency_s, send_s, rendezvous)
        return cls(tuple(link for _ in range(num_stages - 1)), link)

    @classmethod
    def from_config(cls, sim, num_stages: int, *, cpu: bool) -> LinkModel:
        """Links of ``sim`` (a SimConfig) for ``num_stages`` stages; ``cpu`` resolves ``link=auto`` to gloo."""
        kind = sim.link
        if kind == "auto":
            kind = "gloo" if cpu else "nvlink"

        def hop(a: int, b: int) -> Link:
            same_node = a // sim.gpus_per_node == b // sim.gpus_per_node
            k = kind if kind in ("gloo", "infiniband") or same_node else "infiniband"
            bw, lat = _PRESETS[k][_LINK_FAMILY.get(sim.gpu, sim.gpu)]
            if sim.link_bandwidth_gbps is not None:
                bw = sim.link_bandwidth_gbps * GB
            if sim.link_latency_us is not None:
                lat = sim.link_latency_us * 1e-6
            send = _SEND_S[k] if sim.link_send_overhead_us is None else sim.link_send_overhead_us * 1e-6
            return Link(k, bw, lat, send, sim.rendezvous)

        return cls(tuple(hop(s, s + 1) for s in range(num_stages - 1)), hop(num_stages - 1, 0))

    def describe(self) -> str:
        """One line: each hop's kind, bandwidth and latency."""
        def one(h: Link) -> str:
            mode = "rendezvous" if h.rendezvous else "eager"
            return (f"{h.kind} {h.bandwidth_Bps / GB:g} GB/s {h.latency_s * 1e6:.0f} us "
                    f"(+{h.send_s * 1e6:.0f} us send, {mode})")

        return "; ".join([f"{s}->{s + 1} {one(h)}" for s, h in enumerate(self.hops)] + [f"back {one(self.back)}"])
