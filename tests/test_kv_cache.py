"""KV cache geometry, budget sizing and the reused gather buffers."""

import torch
from transformers import LlamaConfig

from pp_runtime.model.cache_size import bytes_per_block, num_blocks_for_budget
from stages.kv_cache import KVCache

CFG = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3)


def _cache(num_blocks=10):
    cache = KVCache([1, 2], num_blocks=num_blocks, block_size=4, hf_config=CFG, dtype=torch.float32,
                    device=torch.device("cpu"))
    cache.k.copy_(torch.randn_like(cache.k))
    cache.v.copy_(torch.randn_like(cache.v))
    return cache


def test_layer_maps_global_layer_ids_to_local_tensors():
    cache = _cache()
    k, v = cache.layer(2)
    assert k.shape == (10, 4, 2, 16) and torch.equal(k, cache.k[1]) and torch.equal(v, cache.v[1])


def test_gather_equals_indexing_and_reuses_its_buffer():
    cache = _cache()
    k, _ = cache.layer(1)
    big = torch.tensor([3, 0, 9, 3, 5])
    first = cache.gather(k, big, 0)
    assert torch.equal(first, k[big])
    ptr = first.data_ptr()
    small = torch.tensor([7, 2])
    second = cache.gather(k, small, 0)
    assert torch.equal(second, k[small])
    assert second.data_ptr() == ptr  # same storage: no new allocation for a smaller gather
    values = cache.gather(cache.layer(1)[1], small, 1)
    assert torch.equal(values, cache.layer(1)[1][small]) and torch.equal(second, k[small])  # kinds apart
    grown = cache.gather(k, torch.arange(10).repeat(3), 0)
    assert torch.equal(grown, k[torch.arange(10).repeat(3)])


def test_budget_sizing_uses_the_stage_with_most_layers():
    per = bytes_per_block(2, 16, CFG, torch.float32)
    assert per == 2 * 2 * 16 * 2 * 16 * 4
    assert num_blocks_for_budget(per * 100 / 2**30, max_layers_per_stage=2, block_size=16, hf_config=CFG,
                                 dtype=torch.float32) == 100
