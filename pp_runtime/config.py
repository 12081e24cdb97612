"""Typed configuration: one dataclass per component, registered with Hydra's ConfigStore.

The YAML files under ``conf/`` only compose and override these. Every field is documented here, once.
``validate()`` runs on every rank before any process group exists, so a bad value fails fast and names the key.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import MISSING

POLICIES = ("sarathi", "orca", "vllm", "static", "fcfs", "throttle")
PREFILL_ORDERS = ("fair", "deadline", "fcfs")
ORDERED_POLICIES = ("sarathi", "throttle")  # the policies that read scheduler.prefill_order (throttle is sarathi's)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
WORKLOADS = ("default", "jsonl", "trace", "synthetic")
ARRIVALS = ("all", "trace", "poisson")
DISTRIBUTIONS = ("uniform", "zipf", "lognormal")
SIM_COST_MODELS = ("profiled", "layer_profile", "roofline")
SIM_GPUS = ("h100", "h200", "a100", "a100-40gb")  # the presets of pp_runtime/sim/hardware.py (tested)
# The keys whose value is a file or folder the job reads; a relative one is relative to the launch directory.
PATH_KEYS = ("workload.path", "model.path", "scheduler.cost_model_path", "sim.cost_model_path",
             "sim.layer_profile_path")
SIM_LINKS = ("auto", "nvlink", "pcie", "infiniband", "gloo")
TRANSPORTS = ("auto", "nccl", "gloo")


UNREAD_BY_UNORDERED = ("prefill_order", "max_chunks_in_flight")  # scheduler keys only ORDERED_POLICIES read


def unread_dropped(policy: str | None, key: str, value):
    """``scheduler.<key>`` (one of ``UNREAD_BY_UNORDERED``) as this checkout reads a recorded run's (metrics.json,
    run_state.json): runs recorded before the other policies refused these keys may hold them (prefill_order said
    fair under every policy), and only sarathi and throttle read them."""
    return value if policy in ORDERED_POLICIES else None


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the key and what to set instead."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


@dataclass
class ModelConfig:
    # Local Hugging Face model folder (config.json + safetensors). null: the embedded SmolLM2-135M-Instruct.
    # Mandatory in the schema so that `model=local` without `model.path=DIR` fails; conf/model/smollm2.yaml sets null.
    path: str | None = MISSING
    # Attention backend: auto, triton, flash or sdpa. auto: flash on CUDA when flash-attn imports and
    # cache.block_size % 256 == 0, else triton on CUDA, sdpa on the CPU. triton on the CPU needs TRITON_INTERPRET=1.
    attention: str = "auto"
    # Longest prompt + output allowed; None: the model's max_position_embeddings.
    max_model_len: int | None = None

    def validate(self) -> None:
        _check(self.attention in ("auto", "triton", "flash", "sdpa"), "model.attention", self.attention,
               "use auto, triton, flash or sdpa")
        if self.max_model_len is not None:
            _check(self.max_model_len >= 2, "model.max_model_len", self.max_model_len, "must be >= 2")


@dataclass
class PipelineConfig:
    # Number of pipeline stages = torchrun ranks (pp-sweep launches this many). None: the torchrun world size.
    stages: int | None = None
    # Manual split, e.g. [10, 20]: number of decoder layers per stage. None: balanced by cost.
    layers_per_stage: list[int] | None = None
    # Micro-batches in flight at once. None: one per stage. Must be >= stages so every stage has work.
    num_microbatches: int | None = None
    # How activations travel between stages: nccl (GPU to GPU), gloo (over the host; CUDA activations are staged
    # through pinned host memory, so several stages can share one GPU), or auto: nccl when every rank of the node
    # has its own GPU, else gloo. The CPU always uses gloo.
    transport: str = "auto"
    # Split the LM head's vocabulary between stage 0 and the last stage (a vocabulary-parallel head,
    # stages/vocab_parallel.py): each computes half of the logits of the sampled rows, so the head's cost, about
    # ten layers per decode token on SmolLM2-135M, weighs on both ends instead of the last stage alone. Tokens are
    # the same either way. true, false, or auto: on the CPU with 2+ stages (not yet run on a GPU).
    split_lm_head: Any = "auto"

    def validate(self) -> None:
        _check(self.stages is not None and self.stages >= 1, "pipeline.stages", self.stages, "must be >= 1")
        _check(self.split_lm_head == "auto" or isinstance(self.split_lm_head, bool), "pipeline.split_lm_head",
               self.split_lm_head, "use auto, true or false")
        if self.layers_per_stage is not None:
            _check(len(self.layers_per_stage) == self.stages, "pipeline.layers_per_stage", self.layers_per_stage,
                   f"needs one entry per stage ({self.stages} entries, pipeline.stages={self.stages})")
            _check(all(n >= 1 for n in self.layers_per_stage), "pipeline.layers_per_stage", self.layers_per_stage,
                   "every stage needs at least one layer")
        _check(self.transport in TRANSPORTS, "pipeline.transport", self.transport,
               f"use one of {', '.join(TRANSPORTS)}")
        if self.num_microbatches is not None:
            _check(self.num_microbatches >= self.stages, "pipeline.num_microbatches", self.num_microbatches,
                   f"must be >= pipeline.stages ({self.stages}) so that every stage has work")

    @property
    def depth(self) -> int:
        return self.num_microbatches or self.stages


@dataclass
class SchedulerConfig:
    # Batching policy: sarathi (chunked prefills + piggybacked decodes), orca, vllm, static, fcfs (simple), or
    # throttle (gLLM's token throttling on top of sarathi).
    policy: str = "sarathi"
    # Most tokens in one micro-batch (prefill chunk tokens + decode tokens): a number >= 1, or auto: the knee of
    # the cost model from the start-up profile (the smallest budget whose per-token time is within 5% of the
    # best, at most 1024, capped by tbt_slo_ms), printed and stored in metrics.json as token_budget; 256 for
    # policies without a cost model. See pp_runtime/planner/budget.py.
    token_budget: Any = "auto"
    # Largest prefill chunk of one request in one micro-batch.
    chunk_size: int = 256
    # Most requests running (holding KV cache) at once.
    max_num_seqs: int = 256
    # Round chunk sizes so a micro-batch's token count is a multiple of this (0: off).
    tile: int = 0
    # When set, no micro-batch's predicted time (cost model) exceeds this many milliseconds.
    tbt_slo_ms: float | None = None
    # Balance micro-batches by predicted time (cost model) rather than by token count.
    time_balanced: bool = True
    # Cost model coefficients file (JSON); None: profile the stages at start-up.
    cost_model_path: str | None = None
    # sarathi: most prefill chunks of one request in flight at once (chunk pipelining); None: pipeline.depth,
    # 1: a chunk waits until the previous one has crossed the whole pipeline.
    max_chunks_in_flight: int | None = None
    # sarathi: which prefills fill a micro-batch's budget first. fair: the least prefill left first, so short
    # prompts are not stuck behind a long one, with aging (a request that waited while others were served a quarter
    # of its tokens goes first, by deadline) so a long one still finishes; decodes are never held back
    # (stall-free). deadline: fair, and the decodes of requests that overtook an aged prompt also wait behind its
    # chunks (their TBT pays once, its TTFT gains; ignored with tbt_slo_ms). fcfs: arrival order. null (the
    # default): fair under sarathi and throttle (validate() fills it in, so metrics.json and run_state.json say
    # fair); the other policies have an order of their own and refuse any value.
    prefill_order: str | None = None

    def validate(self) -> None:
        _check(self.policy in POLICIES, "scheduler.policy", self.policy, f"use one of {', '.join(POLICIES)}")
        b = self.token_budget
        _check(b == "auto" or (isinstance(b, int) and not isinstance(b, bool) and b >= 1), "scheduler.token_budget",
               b, "use an integer >= 1, or auto to choose it from the cost model")
        _check(self.chunk_size >= 1, "scheduler.chunk_size", self.chunk_size, "must be >= 1")
        _check(self.max_num_seqs >= 1, "scheduler.max_num_seqs", self.max_num_seqs, "must be >= 1")
        _check(self.tile >= 0, "scheduler.tile", self.tile, "must be >= 0 (0 turns tiling off)")
        if self.prefill_order is not None:
            _check(self.prefill_order in PREFILL_ORDERS, "scheduler.prefill_order", self.prefill_order,
                   f"use one of {', '.join(PREFILL_ORDERS)}, or null for fair")
            self._read_by_policy("prefill_order")
        elif self.policy in ORDERED_POLICIES:
            self.prefill_order = "fair"
        if self.max_chunks_in_flight is not None:
            _check(self.max_chunks_in_flight >= 1, "scheduler.max_chunks_in_flight", self.max_chunks_in_flight,
                   "must be >= 1, or null for the pipeline depth")
            self._read_by_policy("max_chunks_in_flight")
        if self.tbt_slo_ms is not None:
            _check(self.tbt_slo_ms > 0, "scheduler.tbt_slo_ms", self.tbt_slo_ms, "must be > 0, or null to turn off")

    def _read_by_policy(self, key: str) -> None:
        """A key of ``UNREAD_BY_UNORDERED`` set explicitly: refused unless the policy reads it."""
        _check(self.policy in ORDERED_POLICIES, f"scheduler.{key}", getattr(self, key),
               f"only scheduler=sarathi and scheduler=throttle read it (chunk pipelining, prefill order), and "
               f"scheduler.policy={self.policy!r} ignores it; remove scheduler.{key}, or use scheduler=sarathi")


@dataclass
class CacheConfig:
    # Tokens per KV-cache block.
    block_size: int = 16
    # Blocks per stage. None: as many as cache.memory_gib holds on the stage with the most layers.
    num_blocks: int | None = None
    # KV-cache memory budget per stage in GiB, used when cache.num_blocks is None. None: on CUDA what
    # cache.gpu_memory_utilization leaves after the stage's weights and activations; on the CPU 0.5 GiB.
    memory_gib: float | None = None
    # Share of each GPU's memory the stage may use for weights, activations and KV cache (vLLM's meaning), when
    # cache.num_blocks and cache.memory_gib are null. Ranks that share one GPU split its memory evenly first.
    gpu_memory_utilization: float = 0.9

    def validate(self) -> None:
        _check(self.block_size >= 1, "cache.block_size", self.block_size, "must be >= 1")
        if self.num_blocks is not None:
            _check(self.num_blocks >= 1, "cache.num_blocks", self.num_blocks, "must be >= 1")
        if self.memory_gib is not None:
            _check(self.memory_gib > 0, "cache.memory_gib", self.memory_gib, "must be > 0, or null for the default")
        _check(0 < self.gpu_memory_utilization <= 1, "cache.gpu_memory_utilization", self.gpu_memory_utilization,
               "must be in (0, 1]")


@dataclass
class WorkloadConfig:
    # default (built-in prompts), jsonl (request file), trace (CSV of lengths), synthetic.
    kind: str = "default"
    # Input file for jsonl and trace workloads.
    path: str | None = None
    # Requests to sample (trace, synthetic).
    num_requests: int = 64
    # Seed for sampling requests, lengths, token ids and arrivals.
    seed: int = 0
    # Multiply trace lengths by this (trace workloads on a CPU need e.g. 0.125).
    length_scale: float = 1.0
    # Arrivals: all (offline, at time 0), trace (arrived_at column), poisson (at workload.rate per second).
    arrival: str = "all"
    # Poisson arrival rate, requests per second.
    rate: float = 1.0
    # synthetic: length distribution (uniform, zipf, lognormal).
    distribution: str = "uniform"
    # synthetic: mean prompt length in tokens.
    prefill_len: int = 128
    # synthetic: prefill:decode token ratio (decode mean = prefill_len / pd_ratio).
    pd_ratio: float = 4.0
    # Default max_tokens for requests that do not set it (default and jsonl workloads).
    max_tokens: int = 32

    def validate(self) -> None:
        _check(self.kind in WORKLOADS, "workload.kind", self.kind, f"use one of {', '.join(WORKLOADS)}")
        if self.kind == "jsonl":
            _check(bool(self.path), "workload.path", self.path, "workload=jsonl needs a request file: set "
                   "workload.path=requests.jsonl (one JSON request per line, see README.md)")
        if self.kind == "trace":
            _check(bool(self.path), "workload.path", self.path, "workload=trace needs a CSV trace of request "
                   "lengths: set workload.path=FILE.csv (columns num_prefill_tokens, num_decode_tokens, optional "
                   "arrived_at; e.g. splitwise_conv.csv from https://github.com/microsoft/vidur/tree/main/data/"
                   "processed_traces)")
        if self.kind in ("default", "synthetic"):
            _check(self.path is None, "workload.path", self.path, f"workload={self.kind} reads no file: remove "
                   f"workload.path, or use workload=jsonl (a request file) or workload=trace (a CSV trace)")
        _check(self.num_requests >= 1, "workload.num_requests", self.num_requests, "must be >= 1")
        _check(self.length_scale > 0, "workload.length_scale", self.length_scale, "must be > 0")
        _check(self.arrival in ARRIVALS, "workload.arrival", self.arrival, f"use one of {', '.join(ARRIVALS)}")
        _check(self.rate > 0, "workload.rate", self.rate, "must be > 0")
        _check(self.distribution in DISTRIBUTIONS, "workload.distribution", self.distribution,
               f"use one of {', '.join(DISTRIBUTIONS)}")
        _check(self.prefill_len >= 1, "workload.prefill_len", self.prefill_len, "must be >= 1")
        _check(self.pd_ratio > 0, "workload.pd_ratio", self.pd_ratio, "must be > 0")
        _check(self.max_tokens >= 1, "workload.max_tokens", self.max_tokens, "must be >= 1")


@dataclass
class TracerConfig:
    # Record compute/send/wait/plan events and write trace.json, bubbles.json and timeline.png.
    enabled: bool = True
    # Preallocated events per rank; recording stops (with a warning) when full.
    capacity: int = 200_000
    # Ping-pong rounds per rank for the clock-offset estimate.
    clock_sync_rounds: int = 50
    # Write timeline.png (needs matplotlib).
    timeline: bool = True

    def validate(self) -> None:
        _check(self.capacity >= 1, "tracer.capacity", self.capacity, "must be >= 1")
        _check(self.clock_sync_rounds >= 1, "tracer.clock_sync_rounds", self.clock_sync_rounds, "must be >= 1")


@dataclass
class RuntimeConfig:
    # Seconds any rank waits on another before failing the job.
    timeout_s: float = 300.0
    # Intra-op threads per rank (one per rank by default: ranks share the machine's cores).
    threads: int = 1
    # Keep each rank's threads on cores of its own (runtime.threads of them, the node's ranks in order), so that
    # one stage's helper threads never wake on another stage's core (launch/cores.py). auto: on the CPU with 2+
    # ranks on the node, when they x runtime.threads fit the cores the job may use; true: also on a GPU or alone,
    # and refuse when they do not fit; false: never.
    pin_cores: Any = "auto"
    # Show a progress bar on rank 0 when stdout is a terminal.
    progress: bool = True
    # A run directory that already holds outputs.jsonl: true continues it (requests already in the file are
    # skipped; a different config or request file is refused), false starts over (every file the earlier run wrote
    # moves into old-<time>/, pp_runtime/rundir/run_state.py RUN_FILES), force continues even if the config or the
    # requests changed.
    resume: bool | str = True
    # After SIGTERM / SIGUSR1, seconds rank 0 keeps serving the requests already running (admitting none) before
    # it stops; the micro-batches in flight then come back, and every rank exits with code 75. 0: stop at once.
    drain_timeout_s: float = 10.0
    # Replay decode-only micro-batches from CUDA graphs (CUDA with the triton or flash backend only; else ignored).
    cuda_graphs: bool = True
    # Reuse the cost model an earlier run profiled for the same model, split, device, dtype, backend, threads and
    # shapes (~/.cache/pp-runtime/cost_models; PP_RUNTIME_CACHE or PP_RUNTIME_COST_CACHE move it), so a second run
    # starts without profiling; false: profile at every start. (pp_runtime/model/cost_cache.py)
    cost_model_cache: bool = True

    def validate(self) -> None:
        _check(self.timeout_s > 0, "runtime.timeout_s", self.timeout_s, "must be > 0")
        _check(self.threads >= 1, "runtime.threads", self.threads, "must be >= 1")
        _check(self.pin_cores == "auto" or isinstance(self.pin_cores, bool), "runtime.pin_cores", self.pin_cores,
               "use auto, true or false")
        _check(self.resume is True or self.resume is False or self.resume == "force", "runtime.resume",
               self.resume, "use true (continue the run directory), false (start over) or force")
        _check(self.drain_timeout_s >= 0, "runtime.drain_timeout_s", self.drain_timeout_s, "must be >= 0")
        _check(isinstance(self.cuda_graphs, bool), "runtime.cuda_graphs", self.cuda_graphs, "use true or false")


@dataclass
class DebugConfig:
    # Sleep this long in every compute step of debug.delay_stage (to test the tracer).
    stage_delay_ms: float = 0.0
    # Stage that debug.stage_delay_ms applies to.
    delay_stage: int = 1
    # Raise an exception on this stage (to test failure handling); None: off.
    fail_stage: int | None = None
    # ...after this many micro-batches on that stage.
    fail_after: int = 0
    # Rank 0 sends itself debug.signal after this many requests finished (to test preemption); None: off.
    signal_after: int | None = None
    # The signal debug.signal_after sends: SIGTERM or SIGUSR1.
    signal: str = "SIGTERM"

    def validate(self, num_stages: int) -> None:
        _check(self.stage_delay_ms >= 0, "debug.stage_delay_ms", self.stage_delay_ms, "must be >= 0")
        if self.stage_delay_ms:
            _check(0 <= self.delay_stage < num_stages, "debug.delay_stage", self.delay_stage,
                   f"must name a stage in 0..{num_stages - 1}")
        _check(self.fail_after >= 0, "debug.fail_after", self.fail_after, "must be >= 0")
        if self.fail_stage is not None:
            _check(0 <= self.fail_stage < num_stages, "debug.fail_stage", self.fail_stage,
                   f"must name a stage in 0..{num_stages - 1}")
        if self.signal_after is not None:
            _check(self.signal_after >= 0, "debug.signal_after", self.signal_after, "must be >= 0, or null")
        _check(self.signal in ("SIGTERM", "SIGUSR1"), "debug.signal", self.signal, "use SIGTERM or SIGUSR1")


@dataclass
class SimConfig:
    # Where pp-sim takes a micro-batch's time on each stage from: profiled (a cost_model.json of a real run,
    # sim.cost_model_path), layer_profile (a per-layer profile of one GPU, sim.layer_profile_path, scaled to the
    # layer split) or roofline (analytic, from sim.gpu's peak FLOP/s and memory bandwidth and the model shape).
    cost_model: str = "profiled"
    # cost_model.json written by a real run (CostModel.to_json); None with cost_model=profiled: the file of
    # scheduler.cost_model_path, else CostModel.default's rough CPU numbers.
    cost_model_path: str | None = None
    # Per-layer profile file for cost_model=layer_profile.
    layer_profile_path: str | None = None
    # GPU preset of the simulated hardware (roofline numbers, NVLink/InfiniBand generation): h100, h200, a100 or
    # a100-40gb.
    gpu: str = "h100"
    # Model shape preset to simulate (e.g. gpt3-175b, llama-3.1-8b, llama-3.2-1b, see pp_runtime.sim.hardware);
    # None: the job's model (model.path, or the default model).
    model_shape: str | None = None
    # Link between consecutive stages: auto (loopback gloo for CPU runs and profiled CPU cost models; else NVLink
    # within a node and InfiniBand across nodes), nvlink, pcie (within a node; InfiniBand across), infiniband
    # (every hop) or gloo (every hop, loopback TCP). Preset numbers and sources: pp_runtime/sim/links.py.
    link: str = "auto"
    # GPUs per node: stages s and s+1 share a node iff s // gpus_per_node == (s+1) // gpus_per_node.
    gpus_per_node: int = 8
    # Override every hop's bandwidth, in GB/s (gigabytes per second, one direction); None: the preset's.
    link_bandwidth_gbps: float | None = None
    # Override every hop's latency, in microseconds; None: the preset's.
    link_latency_us: float | None = None
    # Override the sender's own time per send (pickling, posting), in microseconds; None: the preset's.
    link_send_overhead_us: float | None = None
    # false: eager, a transfer starts when sent and the data waits at a busy receiver, as pp-runtime's stages
    # post their receives ahead (see pp_runtime/sim/links.py); true: only once the receiving stage is free (runs
    # recorded before issue 14, whose stages posted their receives after computing, replay with true).
    rendezvous: bool = False
    # Charge the planner's time per schedule() call to stage 0 (rank 0 plans on the thread that runs stage 0).
    charge_planner: bool = True
    # Planner time charged per schedule() call, in microseconds; None: measure the real planner's time on this
    # machine at every call (not deterministic); a number makes simulations repeatable (tests use one).
    planner_time_us: float | None = None

    def validate(self) -> None:
        _check(self.cost_model in SIM_COST_MODELS, "sim.cost_model", self.cost_model,
               f"use one of {', '.join(SIM_COST_MODELS)}")
        if self.cost_model == "layer_profile":
            _check(bool(self.layer_profile_path), "sim.layer_profile_path", self.layer_profile_path,
                   "sim.cost_model=layer_profile needs the path of a per-layer profile")
        _check(self.gpu in SIM_GPUS, "sim.gpu", self.gpu, f"use one of {', '.join(SIM_GPUS)}")
        _check(self.link in SIM_LINKS, "sim.link", self.link, f"use one of {', '.join(SIM_LINKS)}")
        _check(self.gpus_per_node >= 1, "sim.gpus_per_node", self.gpus_per_node, "must be >= 1")
        if self.link_bandwidth_gbps is not None:
            _check(self.link_bandwidth_gbps > 0, "sim.link_bandwidth_gbps", self.link_bandwidth_gbps,
                   "must be > 0 (GB/s), or null for the link preset's")
        if self.link_latency_us is not None:
            _check(self.link_latency_us >= 0, "sim.link_latency_us", self.link_latency_us,
                   "must be >= 0 (microseconds), or null for the link preset's")
        if self.link_send_overhead_us is not None:
            _check(self.link_send_overhead_us >= 0, "sim.link_send_overhead_us", self.link_send_overhead_us,
                   "must be >= 0 (microseconds), or null for the link preset's")
        if self.planner_time_us is not None:
            _check(self.planner_time_us >= 0, "sim.planner_time_us", self.planner_time_us,
                   "must be >= 0 (microseconds), or null to measure the planner")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tracer: TracerConfig = field(default_factory=TracerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    # Only pp-sim reads it: the simulated hardware and where its times come from.
    sim: SimConfig = field(default_factory=SimConfig)
    # auto: CUDA when a GPU exists, else CPU (pipeline.transport says how stages talk).
    device: str = "auto"
    # auto: float32 on CPU, bfloat16 on CUDA.
    dtype: str = "auto"
    # Where outputs.jsonl, metrics.json and the bubble reports go (set from hydra.run.dir by launch.run).
    output_dir: str = "."

    def validate(self) -> None:
        _check(self.device in DEVICES, "device", self.device, f"use one of {', '.join(DEVICES)}")
        _check(self.dtype in DTYPES, "dtype", self.dtype, f"use one of {', '.join(DTYPES)}")
        for part in (self.model, self.pipeline, self.scheduler, self.workload, self.cache, self.tracer,
                     self.runtime, self.sim):
            part.validate()
        self.debug.validate(self.pipeline.stages)


# The YAML tree ``conf/`` is the importable package ``conf`` (installed with package_data): every entry point finds
# it by module, from any directory, as a console script or ``python -m``.
CONFIG_MODULE = "conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
# Config groups (``scheduler=orca``); ``tune`` is the group pp-tune writes (``+tune=best``, on a searchpath).
_GROUPS = ("model", "pipeline", "scheduler", "workload", "cache", "tracer", "runtime", "debug", "sim", "tune")


def config_keys() -> list[str]:
    """Every settable key of the schema, dotted (``scheduler.chunk_size``), in declaration order."""
    hints = typing.get_type_hints(Config)
    keys = []
    for f in fields(Config):
        if is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{sub.name}" for sub in fields(hints[f.name])]
        else:
            keys.append(f.name)
    return keys


def unknown_key_error(key: str, *, where: str) -> ConfigError:
    """The error for a key the schema lacks, naming the closest valid key (``did you mean scheduler.chunk_size?``)."""
    keys = config_keys()
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # a misspelled section: compare the field name alone (chunksize -> scheduler.chunk_size)
        names = {k.rsplit(".", 1)[-1]: k for k in keys}
        close = [names[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(names), n=1, cutoff=0.75)]
    hint = f"did you mean {close[0]}?" if close else "the keys are documented in pp_runtime/config.py"
    return ConfigError(f"{key} is not a config key ({where}); {hint}")


def check_overrides(overrides: list[str]) -> None:
    """Refuse an override of a key the schema lacks, with or without Hydra's ``+``, before anything is composed.

    Group selections (``scheduler=orca``, ``+tune=best``), ``hydra.*`` and deletions (``~key``) are Hydra's to
    check. Raises ``ConfigError`` naming the override and the closest valid key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"cannot parse the overrides: {exc}") from None
    keys = set(config_keys())
    for o in parsed:
        key = o.key_or_group
        if o.is_delete() or key.replace("/", ".").split(".")[0] == "hydra" or key in keys or key in _GROUPS:
            continue
        raise unknown_key_error(key, where=f"command-line override {o.input_line!r}")


def compose_config(overrides: list[str]) -> Config:
    """The job's typed config from Hydra overrides, composed from the ``conf`` package as ``pp-run`` does.

    Raises ``ConfigError`` for an unknown key (naming the closest valid one), a group or value Hydra rejects,
    or a value of the wrong type. Values are not range-checked here: ``Config.validate`` does that.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    check_overrides(overrides)
    register_configs()
    GlobalHydra.instance().clear()  # a previous compose in this process (tests, pp-sweep) must not leak
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            return OmegaConf.to_object(compose("config", overrides=overrides))
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key} is required here (e.g. model=local needs model.path=DIR); set "
                          f"{exc.full_key}=...") from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"the config does not compose: {_hydra_message(exc)}") from None


def _hydra_message(exc: BaseException) -> str:
    """Hydra's message without its search-path listing, with the cause of a failed override merge."""
    text = str(exc).split("\nConfig search path:")[0].strip()
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f": {str(cause).splitlines()[0]}"
    return text


def register_configs() -> None:
    """Register every schema with Hydra's ConfigStore (the YAML under conf/ composes on top of these)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, node in (("model", ModelConfig), ("pipeline", PipelineConfig), ("scheduler", SchedulerConfig),
                        ("workload", WorkloadConfig), ("cache", CacheConfig), ("tracer", TracerConfig),
                        ("runtime", RuntimeConfig), ("debug", DebugConfig), ("sim", SimConfig)):
        cs.store(group=group, name=f"base_{group}", node=node)
