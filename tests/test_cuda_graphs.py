"""CUDA graphs' plain parts on the CPU: bucket sizes, bucket choice, and padded static buffers (decode-only and mixed
micro-batches) that give the same attention rows as the unpadded micro-batch (triton kernel, interpreter), and the
executor's replay path emulated against eager. Capture and replay: GPU test below."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pp_runtime.plan import MicroBatch, Piece
from stages.attention import paged_attention, prepare
from stages.cuda_graphs import (
    Bucket,
    CudaGraphs,
    StaticBuffers,
    bucket_sizes,
    graph_buckets,
    graphs_wanted,
    pick_bucket,
    pick_graph_bucket,
)
from stages.inputs import build_stage_inputs
from stages.kv_cache import KVCache

CPU = torch.device("cpu")
HQ, HKV, D, BLOCK = 4, 2, 16, 16


def test_bucket_sizes():
    assert bucket_sizes(256) == [1, 2, 4, 8, *range(16, 257, 8)]
    assert bucket_sizes(3) == [1, 2, 4]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 24]  # the last bucket holds the whole budget
    assert bucket_sizes(2048, cap=64)[-1] == 64
    assert bucket_sizes(1) == [1]


def test_pick_bucket_is_the_smallest_that_fits():
    sizes = bucket_sizes(64)
    assert [pick_bucket(n, sizes) for n in (1, 3, 8, 9, 16, 17, 64)] == [1, 4, 8, 16, 16, 24, 64]
    assert pick_bucket(65, sizes) is None


def test_graph_buckets_cover_decodes_and_mixed_micro_batches():
    buckets = graph_buckets(48)
    assert [b.tokens for b in buckets if b.decode] == bucket_sizes(48)
    mixed = {(b.tokens, b.seqs) for b in buckets if not b.decode}
    assert mixed == {(16, 2), (16, 4), (16, 8), (16, 16), (32, 2), (32, 4), (32, 8), (32, 16), (32, 32),
                     (48, 2), (48, 4), (48, 8), (48, 16), (48, 32), (48, 48)}
    assert max(b.seqs for b in graph_buckets(2048)) == 256  # MAX_GRAPH_SEQS
    assert {b.tokens for b in graph_buckets(8) if not b.decode} == {8}
    assert not [b for b in graph_buckets(48, mixed=False) if not b.decode]


def test_pick_graph_bucket():
    buckets = graph_buckets(48)
    assert pick_graph_bucket(3, 3, 1, buckets) == Bucket(4, 4, True)  # decodes only
    assert pick_graph_bucket(20, 3, 9, buckets) == Bucket(32, 4, False)  # 3 sequences + the padding one
    assert pick_graph_bucket(16, 4, 7, buckets) == Bucket(16, 4, False)  # fits exactly: no padding sequence
    assert pick_graph_bucket(16, 16, 1, buckets) == Bucket(16, 16, True)
    assert pick_graph_bucket(15, 15, 2, buckets) == Bucket(16, 16, False)
    assert pick_graph_bucket(49, 2, 40, buckets) is None  # past the budget: eager
    assert pick_graph_bucket(15, 16, 1, graph_buckets(16, mixed=False)) == Bucket(16, 16, True)


def test_graphs_only_on_cuda_with_a_capturable_backend():
    cuda = torch.device("cuda")
    assert graphs_wanted(True, cuda, "triton") and graphs_wanted(True, cuda, "flash")
    assert not graphs_wanted(True, cuda, "sdpa")
    assert not graphs_wanted(True, CPU, "triton")
    assert not graphs_wanted(False, cuda, "triton")


def _decode_batch() -> MicroBatch:
    tables = {0: (3, 1), 1: (0,), 2: (2, 4, 5)}
    starts = {0: 20, 1: 4, 2: 40}
    return MicroBatch(0, tuple(Piece(seq_id=s, start=starts[s], token_ids=(9,), block_table=tables[s],
                                     is_prefill=False, sample=True) for s in tables))


def test_fill_pads_rows_onto_the_scratch_block():
    mb = _decode_batch()
    inputs = build_stage_inputs(mb, block_size=BLOCK, device=CPU, token_ids=True)
    buf = StaticBuffers.allocate(8, table_width=5, hidden_size=None, dtype=torch.float32, device=CPU)
    buf.block_tables.fill_(7)  # stale rows from an earlier, larger micro-batch
    buf.fill(inputs, inputs.token_ids, rows=4, scratch_block=6, block_size=BLOCK)
    view = buf.view(4, block_size=BLOCK)
    assert view.positions.tolist() == [20, 4, 40, 0]
    assert view.slot_mapping.tolist() == [*inputs.slot_mapping.tolist(), 6 * BLOCK]
    assert view.context_lens.tolist() == [21, 5, 41, 1]
    assert view.cu_seqlens_q.tolist() == [0, 1, 2, 3, 4]
    # The micro-batch's own width (3, zero-padded by the builder), then scratch; padding rows: scratch only.
    assert view.block_tables.tolist() == [[3, 1, 0, 6, 6], [0, 0, 0, 6, 6], [2, 4, 5, 6, 6], [6] * 5]
    assert buf.x[:4].tolist() == [9, 9, 9, 0]
    assert view.max_q == 1 and view.max_context == 5 * BLOCK


def _mixed_batch() -> MicroBatch:
    return MicroBatch(0, (Piece(seq_id=0, start=20, token_ids=(9,), block_table=(3, 1), is_prefill=False, sample=True),
                          Piece(seq_id=1, start=10, token_ids=(4,) * 7, block_table=(0, 2), is_prefill=True,
                                sample=True),
                          Piece(seq_id=2, start=40, token_ids=(5,), block_table=(2, 4, 5), is_prefill=False,
                                sample=False)))


def test_mixed_fill_adds_one_padding_sequence_and_empty_ones():
    inputs = build_stage_inputs(_mixed_batch(), block_size=BLOCK, device=CPU, token_ids=True)
    buf = StaticBuffers.allocate(32, seqs=8, table_width=4, hidden_size=None, dtype=torch.float32, device=CPU)
    buf.block_tables.fill_(7)
    buf.context_lens.fill_(99)
    buf.fill(inputs, inputs.token_ids, rows=16, seqs=8, scratch_block=6, block_size=BLOCK)
    view = buf.view(16, seqs=8, block_size=BLOCK)
    assert view.num_tokens == 16 and view.max_q == 16 and view.max_context == 4 * BLOCK
    assert view.cu_seqlens_q.tolist() == [0, 1, 8, 9, 16, 16, 16, 16, 16]  # the padding sequence: rows 9..15
    assert view.context_lens.tolist() == [21, 17, 41, 7, 0, 0, 0, 0]
    assert view.block_tables.tolist()[:3] == [[3, 1, 0, 6], [0, 2, 0, 6], [2, 4, 5, 6]]  # builder pads with 0
    assert view.block_tables.tolist()[3:] == [[6] * 4] * 5
    assert view.slot_mapping.tolist()[9:] == [6 * BLOCK] * 7
    assert view.positions.tolist()[9:] == [0] * 7 and buf.x[9:16].tolist() == [0] * 7
    # Then a decode-only micro-batch in a decode bucket of the same buffers: one-token sequences again.
    dec = build_stage_inputs(_decode_batch(), block_size=BLOCK, device=CPU, token_ids=True)
    buf.fill(dec, dec.token_ids, rows=4, scratch_block=6, block_size=BLOCK)
    assert buf.view(4, block_size=BLOCK).cu_seqlens_q.tolist() == [0, 1, 2, 3, 4]


def _padded_attention_matches_eager(mb, *, seed: int, rows: int, seqs: int | None = None) -> None:
    """Attention over ``mb`` padded into static buffers of ``rows`` tokens (and ``seqs`` sequences) gives the
    eager rows, and the padding writes only into the scratch block."""
    pytest.importorskip("triton")
    cfg = SimpleNamespace(num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D, hidden_size=HQ * D)
    cache = KVCache([0], num_blocks=6, block_size=BLOCK, hf_config=cfg, dtype=torch.float32, device=CPU,
                    extra_blocks=1)
    gen = torch.Generator().manual_seed(seed)
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    t = mb.num_tokens
    q, k, v = (torch.randn(1, h, t, D, generator=gen) for h in (HQ, HKV, HKV))
    module = SimpleNamespace(layer_idx=0)
    inputs = build_stage_inputs(mb, block_size=BLOCK, device=CPU)
    eager, _ = paged_attention(module, q, k, v, None, scaling=0.25, pp_attn=prepare("triton", cache, inputs))
    kept = cache.k[:, :6].clone(), cache.v[:, :6].clone()

    by_seqs = {} if seqs is None else {"seqs": seqs}
    buf = StaticBuffers.allocate(rows, **by_seqs, table_width=4, hidden_size=HQ * D, dtype=torch.float32,
                                 device=CPU)
    buf.fill(inputs, torch.zeros(t, HQ * D), rows=rows, **by_seqs, scratch_block=cache.scratch_block,
             block_size=BLOCK)
    pad = torch.randn(1, HQ, rows - t, D, generator=gen), torch.randn(1, HKV, rows - t, D, generator=gen)
    qp, kp, vp = torch.cat([q, pad[0]], 2), torch.cat([k, pad[1]], 2), torch.cat([v, pad[1]], 2)
    padded, _ = paged_attention(module, qp, kp, vp, None, scaling=0.25,
                                pp_attn=prepare("triton", cache, buf.view(rows, **by_seqs, block_size=BLOCK)))
    torch.testing.assert_close(padded[0, :t], eager[0])
    assert torch.isfinite(padded).all()
    # Padding wrote only into the scratch block: every real block is as the eager run left it.
    assert torch.equal(cache.k[:, :6], kept[0]) and torch.equal(cache.v[:, :6], kept[1])


def test_padded_static_inputs_give_the_same_attention_rows():
    _padded_attention_matches_eager(_decode_batch(), seed=0, rows=8)


def test_mixed_padded_static_inputs_give_the_same_attention_rows():
    _padded_attention_matches_eager(_mixed_batch(), seed=1, rows=16, seqs=8)


def _generate(ex) -> list[list[int]]:
    """Three prompts (5-7 tokens, one mixed micro-batch); then the three decode beside a fourth sequence's 6-token
    prompt (mixed again); then two decode steps of all four: the sampled tokens of each step."""
    table = {s: (2 * s, 2 * s + 1) for s in range(4)}
    prompt = MicroBatch(0, tuple(Piece(seq_id=s, start=0, token_ids=tuple(range(3, 8 + s)), block_table=table[s],
                                       is_prefill=True, sample=True) for s in range(3)))
    steps = [ex.execute(prompt).result()]
    last = dict(enumerate(steps[-1]))
    for step in range(3):
        pieces = [Piece(seq_id=s, start=5 + s + step, token_ids=(last[s],), block_table=table[s], is_prefill=False,
                        sample=True) for s in range(3)]
        if step == 0:
            pieces.append(Piece(seq_id=3, start=0, token_ids=(11, 12, 13, 14, 15, 16), block_table=table[3],
                                is_prefill=True, sample=True))
        else:
            pieces.append(Piece(seq_id=3, start=5 + step, token_ids=(last[3],), block_table=table[3],
                                is_prefill=False, sample=True))
        steps.append(ex.execute(MicroBatch(step + 1, tuple(pieces))).result())
        last = dict(enumerate(steps[-1]))
    return steps


def _executor(model_dir, device, *, graphs: bool):
    from transformers import AutoConfig

    from stages.executor import StageExecutor
    from stages.stage_model import build_stage_model

    hf_config = AutoConfig.from_pretrained(model_dir)
    layers = range(hf_config.num_hidden_layers)
    model = build_stage_model(str(model_dir), hf_config, layers, num_stages=1, stage=0, device=device,
                              dtype=torch.float32)
    cache = KVCache(list(layers), num_blocks=16, block_size=BLOCK, hf_config=hf_config, dtype=torch.float32,
                    device=device, extra_blocks=1)
    return StageExecutor(model, cache, device=device, backend="triton", cuda_graphs=graphs, max_blocks_per_seq=4,
                         graph_max_tokens=32)


class _FakeGraph:
    """Stands in for a captured graph on the CPU: replay recomputes the layers from the static buffers."""

    def __init__(self, fn, out):
        self.fn, self.out = fn, out

    def replay(self):
        self.out.copy_(self.fn())


def test_executor_replay_path_equals_eager_on_cpu(tmp_path):
    """The executor's graph path (bucket choice, padding, static buffers, output rows) with replay emulated."""
    pytest.importorskip("triton")
    from tests.tiny_models import make_tiny_model

    model_dir = make_tiny_model("llama", tmp_path / "llama", num_layers=2)
    eager = _generate(_executor(model_dir, CPU, graphs=False))
    ex = _executor(model_dir, CPU, graphs=False)
    buckets = graph_buckets(32)
    buf = StaticBuffers.allocate(32, seqs=32, table_width=4, hidden_size=None, dtype=torch.float32, device=CPU)
    ex.graphs = CudaGraphs(ex._body, buf, buckets=buckets, block_size=BLOCK, scratch_block=ex.cache.scratch_block)
    replays = []
    for bucket in buckets:
        def layers(bucket=bucket):
            replays.append((bucket.tokens, bucket.seqs, bucket.decode))
            return ex._body(ex.graphs.view(bucket), buf.x[:bucket.tokens])
        graph = _FakeGraph(layers, torch.empty(bucket.tokens, 64))  # [rows, hidden]
        ex.graphs.graphs[bucket] = (graph, graph.out)
    assert _generate(ex) == eager
    # The 18-token prompts in (32 tokens, 4 sequences: 3 + padding), the 9-token mixed step in (16, 8), then the
    # 4-sequence decode steps in the decode bucket of 4.
    assert replays == [(32, 4, False), (16, 8, False), (4, 4, True), (4, 4, True)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replayed_decode_equals_eager_on_gpu(tmp_path):
    from tests.tiny_models import make_tiny_model

    model_dir = make_tiny_model("llama", tmp_path / "llama")
    dev = torch.device("cuda")
    eager = _generate(_executor(model_dir, dev, graphs=False))
    ex = _executor(model_dir, dev, graphs=True)
    assert ex.graphs is not None
    assert _generate(ex) == eager
