"""CUDA graphs' plain parts on the CPU: bucket sizes, bucket choice, and padded static buffers that give the same
attention rows as the unpadded micro-batch (triton kernel, interpreter). Capture and replay: GPU test below."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pp_runtime.plan import MicroBatch, Piece
from stages.attention import paged_attention, prepare
from stages.cuda_graphs import CudaGraphs, StaticBuffers, bucket_sizes, graphs_wanted, pick_bucket
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


def test_padded_static_inputs_give_the_same_attention_rows():
    pytest.importorskip("triton")
    mb = _decode_batch()
    cfg = SimpleNamespace(num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D, hidden_size=HQ * D)
    cache = KVCache([0], num_blocks=6, block_size=BLOCK, hf_config=cfg, dtype=torch.float32, device=CPU,
                    extra_blocks=1)
    gen = torch.Generator().manual_seed(0)
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    q, k, v = (torch.randn(1, h, 3, D, generator=gen) for h in (HQ, HKV, HKV))
    module = SimpleNamespace(layer_idx=0)
    inputs = build_stage_inputs(mb, block_size=BLOCK, device=CPU)
    eager, _ = paged_attention(module, q, k, v, None, scaling=0.25, pp_attn=prepare("triton", cache, inputs))
    kept = cache.k[:, :6].clone(), cache.v[:, :6].clone()

    buf = StaticBuffers.allocate(8, table_width=4, hidden_size=HQ * D, dtype=torch.float32, device=CPU)
    buf.fill(inputs, torch.zeros(3, HQ * D), rows=8, scratch_block=cache.scratch_block, block_size=BLOCK)
    pad = torch.randn(1, HQ, 5, D, generator=gen), torch.randn(1, HKV, 5, D, generator=gen)
    qp, kp, vp = torch.cat([q, pad[0]], 2), torch.cat([k, pad[1]], 2), torch.cat([v, pad[1]], 2)
    padded, _ = paged_attention(module, qp, kp, vp, None, scaling=0.25,
                                pp_attn=prepare("triton", cache, buf.view(8, block_size=BLOCK)))
    torch.testing.assert_close(padded[0, :3], eager[0])
    # Padding wrote only into the scratch block: every real block is as the eager run left it.
    assert torch.equal(cache.k[:, :6], kept[0]) and torch.equal(cache.v[:, :6], kept[1])


def _generate(ex) -> list[list[int]]:
    """Three prompts (5-7 tokens), then three decode steps of all three: the sampled tokens of each step."""
    table = {s: (2 * s, 2 * s + 1) for s in range(3)}
    prompt = MicroBatch(0, tuple(Piece(seq_id=s, start=0, token_ids=tuple(range(3, 8 + s)), block_table=table[s],
                                       is_prefill=True, sample=True) for s in range(3)))
    steps = [ex.execute(prompt).result()]
    for step in range(3):
        steps.append(ex.execute(MicroBatch(step + 1, tuple(
            Piece(seq_id=s, start=5 + s + step, token_ids=(steps[-1][s],), block_table=table[s], is_prefill=False,
                  sample=True) for s in range(3)))).result())
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
                         graph_max_tokens=16)


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
    buf = StaticBuffers.allocate(16, table_width=4, hidden_size=None, dtype=torch.float32, device=CPU)
    ex.graphs = CudaGraphs(ex._body, buf, sizes=bucket_sizes(16), block_size=BLOCK,
                           scratch_block=ex.cache.scratch_block)
    replays = []
    for rows in ex.graphs.sizes:
        def layers(rows=rows):
            replays.append(rows)
            return ex._body(buf.view(rows, block_size=BLOCK), buf.x[:rows])
        graph = _FakeGraph(layers, torch.empty(rows, 64))  # [rows, hidden]
        ex.graphs.graphs[rows] = (graph, graph.out)
    assert _generate(ex) == eager
    assert replays == [4, 4, 4]  # the prompts ran eagerly; each 3-token decode step replayed the 4-row bucket


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
