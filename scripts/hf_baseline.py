"""``python -m scripts.hf_baseline --out DIR [--batch-size 8] [overrides]``: the same workload through Hugging Face
``generate`` with static batching, written as the same ``outputs.jsonl`` and ``metrics.json`` as a pipeline job.

The config is composed from ``conf/`` with the same Hydra overrides a pipeline job takes and checked by
``launch.rank_job.prepare`` (model folder, cache, every request). Pipeline and debug settings do not apply: the
baseline is one process on one device (``device``, ``dtype`` and ``runtime.threads`` do apply).

How it runs: requests, in arrival order, go in consecutive batches of ``--batch-size``; a batch starts once its
last request has arrived. Prompts are left-padded with an attention mask; ``max_new_tokens`` is the batch's
largest output allowance, and each request keeps its own tokens up to its ``max_tokens`` (or the model length),
its first stop token (EOS unless ``ignore_eos``, or a ``stop_token_ids`` entry; the stop token is kept, as in the
pipeline). The batch stops early once every row has stopped. Greedy requests take the argmax; sampled requests
draw with ``stages.sampler`` (same per-request, per-step seeds as the pipeline) through a logits processor.

Timing: a streamer records the wall-clock time of every decoding step of the batch. A request's k-th output token
is stamped with the time step k finished, so its first token time is when the batch's prefill step finished and
its inter-token gaps are the batch's real step times (no even spacing is assumed). ``metrics.json`` has
``policy: "hf-generate"``, ``stages: 1`` and ``batch_size``; there is no pipeline, so ``bubble_fraction`` is empty
and ``pipeline_bubble_fraction`` is null.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pp_runtime.config import Config, ConfigError, DebugConfig, PipelineConfig
from pp_runtime.request import RequestError
from pp_runtime.sequence import SeqStatus, Sequence

POLICY = "hf-generate"


def main(argv: list[str] | None = None) -> int:
    """Run the baseline; returns the exit code (2 for a bad config, workload or model folder)."""
    parser = argparse.ArgumentParser(prog="hf_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for outputs.jsonl and metrics.json")
    parser.add_argument("--batch-size", type=int, default=8, help="requests per static batch (default: 8)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for launch.run (e.g. workload=jsonl)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size={args.batch_size} must be >= 1")

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from launch.rank_job import resolve_rank_job

    try:
        cfg = compose_config(args.overrides)
        cfg.output_dir = args.out
        cfg.runtime.resume = False  # the baseline always runs every request (and overwrites outputs.jsonl)
        job = resolve_rank_job(cfg)
    except (ConfigError, RequestError, FileNotFoundError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = run_baseline(job, batch_size=args.batch_size)
    print(f"{POLICY}: {metrics['completed']}/{metrics['num_requests']} requests, {metrics['total_output_tokens']} "
          f"output tokens in {metrics['duration_s']:.2f}s ({metrics['output_throughput']:.1f} tok/s); "
          f"outputs in {Path(args.out) / 'outputs.jsonl'}")
    return 0


def compose_config(overrides: list[str]) -> Config:
    """The job's config from ``conf/`` and ``overrides``, reduced to one stage (raises on a bad override)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pp_runtime.config import register_configs

    register_configs()
    conf_dir = str(Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        cfg: Config = OmegaConf.to_object(compose("config", overrides=list(overrides)))
    cfg.pipeline = PipelineConfig(stages=1)
    cfg.debug = DebugConfig()
    return cfg


def run_baseline(job, *, batch_size: int) -> dict:
    """Generate every request of ``job`` in static batches; writes outputs.jsonl and metrics.json, returns metrics."""
    from pp_runtime.rundir.metrics import compute_metrics, request_record
    from pp_runtime.trace.reports import write_json

    out_dir = Path(job.cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _load_model(job)
    eos_ids = frozenset(job.eos_token_ids)
    tok = job.tokenizer
    pad_id = _pad_id(tok, eos_ids)
    seqs = [Sequence(i, req) for i, req in enumerate(job.requests)]  # seq ids as the planner numbers them
    order = sorted(seqs, key=lambda s: s.request.arrival_s)
    start = time.perf_counter()
    with open(out_dir / "outputs.jsonl", "w") as outputs:
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            wait = max(s.request.arrival_s for s in batch) - (time.perf_counter() - start)
            if wait > 0:
                time.sleep(wait)
            _generate_batch(model, batch, job=job, eos_ids=eos_ids, pad_id=pad_id, start=start)
            for seq in batch:
                text = tok.decode(seq.output_token_ids, skip_special_tokens=True) if tok is not None else None
                outputs.write(json.dumps(request_record(seq, text)) + "\n")
            outputs.flush()
    wall_s = time.perf_counter() - start
    metrics = compute_metrics(seqs, wall_s=wall_s)
    metrics.update({"policy": POLICY, "stages": 1, "batch_size": batch_size, "bubble_fraction": {},
                    "pipeline_bubble_fraction": None, "config": asdict(job.cfg)})
    write_json(out_dir / "metrics.json", metrics, default=str)
    return metrics


def _load_model(job):
    from transformers import AutoModelForCausalLM, GenerationConfig

    # The kernel family the pipeline's stages use (prepare chose it from model.attention and the device).
    attention = "flash_attention_2" if job.attention_backend == "flash" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(job.model_dir, dtype=job.dtype, attn_implementation=attention)
    # A fresh generation config: the model's own (sampling defaults, EOS stopping) must not change what is run;
    # stopping and sampling are per request, below.
    model.generation_config = GenerationConfig()
    return model.to(job.device).eval()


def _pad_id(tokenizer, eos_ids: frozenset[int]) -> int:
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(eos_ids) if eos_ids else 0


@torch.inference_mode()
def _generate_batch(model, batch: list[Sequence], *, job, eos_ids: frozenset[int], pad_id: int,
                    start: float) -> None:
    from transformers import LogitsProcessorList, StoppingCriteriaList

    width = max(s.prompt_len for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [batch, width], left-padded
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(batch):
        ids[row, width - seq.prompt_len:] = torch.tensor(seq.request.prompt_token_ids)
        mask[row, width - seq.prompt_len:] = 1
    limits = [min(s.request.params.max_tokens, job.max_model_len - s.prompt_len) for s in batch]
    clock = _StepClock(start)
    sampled = any(not s.request.params.greedy for s in batch)
    out = model.generate(
        input_ids=ids.to(job.device), attention_mask=mask.to(job.device), max_new_tokens=max(limits),
        do_sample=False, pad_token_id=pad_id, streamer=clock,
        logits_processor=LogitsProcessorList([_RequestSampling(batch, width)]) if sampled else None,
        stopping_criteria=StoppingCriteriaList([_RequestStop(batch, width, limits, eos_ids)]))
    new_tokens = out[:, width:].tolist()  # [batch, steps]
    for row, seq in enumerate(batch):
        tokens, reason = _truncate(new_tokens[row], seq, limits[row], eos_ids)
        seq.output_token_ids = tokens
        seq.num_computed = seq.num_tokens - 1
        seq.token_times_s = clock.times[:len(tokens)]
        seq.first_token_s = seq.token_times_s[0]
        seq.finish_s = seq.token_times_s[-1]
        seq.finish_reason = reason
        seq.status = SeqStatus.FINISHED


def _stop_reason(seq: Sequence, token: int, n_out: int, limit: int, eos_ids: frozenset[int]) -> str | None:
    """The pipeline planner's rule: a stop token first, then the length limit."""
    p = seq.request.params
    if (token in eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
        return "stop"
    return "length" if n_out >= limit else None


def _truncate(tokens: list[int], seq: Sequence, limit: int, eos_ids: frozenset[int]) -> tuple[list[int], str]:
    for n, token in enumerate(tokens, 1):
        reason = _stop_reason(seq, token, n, limit, eos_ids)
        if reason:
            return tokens[:n], reason
    raise RuntimeError(f"request {seq.request.id!r}: generate stopped after {len(tokens)} tokens, before its "
                       f"limit of {limit}")


class _StepClock:
    """A ``generate`` streamer that stamps each decoding step (seconds since ``start``); the first put is the prompt."""

    def __init__(self, start: float):
        self.start = start
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter() - self.start)
        self._prompt_seen = True

    def end(self) -> None:
        pass


class _RequestStop:
    """Per-row stopping: a row is done at its own stop token or length limit (``generate`` pads it afterwards)."""

    def __init__(self, batch: list[Sequence], width: int, limits: list[int], eos_ids: frozenset[int]):
        self.batch, self.width, self.limits, self.eos_ids = batch, width, limits, eos_ids

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        n_out = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        done = [_stop_reason(seq, last[row], n_out, self.limits[row], self.eos_ids) is not None
                for row, seq in enumerate(self.batch)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _RequestSampling:
    """Sampled rows draw their token with the pipeline's sampler and leave only that token for the argmax."""

    def __init__(self, batch: list[Sequence], width: int):
        self.batch, self.width = batch, width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from pp_runtime.plan import Piece
        from stages.sampler import sample

        step = input_ids.shape[1] - self.width
        for row, seq in enumerate(self.batch):
            params = seq.request.params
            if params.greedy:
                continue
            piece = Piece(seq.seq_id, start=0, token_ids=(), block_table=(), is_prefill=False, sample=True,
                          params=params, step=step)
            token = sample(scores[row:row + 1], [piece])[0]
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


if __name__ == "__main__":
    sys.exit(main())
