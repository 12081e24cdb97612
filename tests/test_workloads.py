"""Workloads: file formats and their errors, sampling determinism, length scaling, trimming and arrivals."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pp_runtime.config import ConfigError, WorkloadConfig
from pp_runtime.request import RequestError
from pp_runtime.workloads import load_workload
from pp_runtime.workloads.default import DEMO_PROMPTS
from pp_runtime.workloads.random_requests import requests_from_lengths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITWISE_CONV = os.path.join(REPO, "..", "shared", "data", "traces", "splitwise_conv.csv")
VOCAB = 300


class CharTokenizer:
    """Tokenizer-like: BOS (1) then one id per character (its code point + 3)."""

    def __call__(self, text: str) -> dict:
        return {"input_ids": [1] + [ord(c) + 3 for c in text]}


class ListChatTokenizer(CharTokenizer):
    """A chat tokenizer whose apply_chat_template returns a plain list (older transformers)."""

    chat_template = "user: {content}\nassistant:"

    def apply_chat_template(self, messages, *, add_generation_prompt, tokenize):
        assert add_generation_prompt and tokenize
        return self(self.chat_template.format(content=messages[0]["content"]))["input_ids"]


def _load(tmp_path, text: str | None = None, *, kind="jsonl", tokenizer=None, max_model_len=64, vocab_size=VOCAB,
          suffix="jsonl", **cfg):
    path = tmp_path / f"w.{suffix}"
    if text is not None:
        path.write_text(text)
    wc = WorkloadConfig(kind=kind, path=str(path), **cfg)
    return load_workload(wc, tokenizer=tokenizer, max_model_len=max_model_len, vocab_size=vocab_size), str(path)


# ---- jsonl ---------------------------------------------------------------------------------------------

def test_jsonl_reads_every_field_and_defaults(tmp_path):
    lines = [
        {"id": "a", "prompt": "hi"},
        {"id": "b", "prompt_token_ids": [5, 6, 7], "max_tokens": 3, "temperature": 1, "top_p": 0.5, "top_k": 4,
         "seed": 9, "ignore_eos": True, "stop_token_ids": [2, 8], "arrival_s": 1.25},
    ]
    text = json.dumps(lines[0]) + "\n\n   \n" + json.dumps(lines[1]) + "\n"
    reqs, _ = _load(tmp_path, text, tokenizer=CharTokenizer(), max_tokens=7)
    a, b = reqs
    assert (a.id, a.prompt_token_ids, a.prompt, a.arrival_s) == ("a", (1, ord("h") + 3, ord("i") + 3), "hi", 0.0)
    assert (a.params.max_tokens, a.params.temperature, a.params.seed, a.params.ignore_eos) == (7, 0.0, None, False)
    assert b.prompt_token_ids == (5, 6, 7) and b.prompt is None and b.arrival_s == 1.25
    p = b.params
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.ignore_eos, p.stop_token_ids) == \
        (3, 1.0, 0.5, 4, 9, True, (2, 8))
    assert isinstance(p.temperature, float)


_GOOD = '{"id": "ok", "prompt_token_ids": [5]}'


@pytest.mark.parametrize("line, fields", [
    ('{"id": "r", "prompt_token_ids": [5], "maxtokens": 3}', ["'r'", "unknown field 'maxtokens'"]),
    ('{"id": "r", "prompt_token_ids": [5], "max_tokens": "5"}', ["'r'", "'max_tokens'", "an integer"]),
    ('{"id": "r", "prompt_token_ids": [5], "max_tokens": true}', ["'r'", "'max_tokens'", "an integer"]),
    ('{"id": "r", "prompt_token_ids": [5], "max_tokens": 2.0}', ["'r'", "'max_tokens'", "an integer"]),
    ('{"id": "r", "prompt_token_ids": [5], "temperature": "hot"}', ["'r'", "'temperature'", "a number"]),
    ('{"id": "r", "prompt_token_ids": [5], "temperature": false}', ["'r'", "'temperature'", "a number"]),
    ('{"id": "r", "prompt_token_ids": [5], "top_p": NaN}', ["'r'", "'top_p'", "a number"]),
    ('{"id": "r", "prompt_token_ids": [5], "ignore_eos": 1}', ["'r'", "'ignore_eos'", "true or false"]),
    ('{"id": "r", "prompt_token_ids": [5, true]}', ["'r'", "'prompt_token_ids'", "list of integers"]),
    ('{"id": "r", "prompt_token_ids": [5.5]}', ["'r'", "'prompt_token_ids'", "list of integers"]),
    ('{"id": "r", "prompt_token_ids": [5], "stop_token_ids": "2"}', ["'r'", "'stop_token_ids'"]),
    ('{"id": "r", "prompt": 5}', ["'r'", "'prompt'", "a string"]),
    ('{"id": "r", "prompt_token_ids": [5], "arrival_s": -1}', ["'r'", "'arrival_s'", ">= 0"]),
    ('{"id": "r", "prompt_token_ids": [5], "prompt": "x"}', ["'r'", "'prompt'", "'prompt_token_ids'", "both"]),
    ('{"id": "r", "max_tokens": 3}', ["'r'", "'prompt'", "'prompt_token_ids'", "neither"]),
    ('{"id": "r", "prompt": "no tokenizer here"}', ["'r'", "'prompt'", "tokenizer"]),
    ('{"prompt_token_ids": [5]}', ["'id'", "missing"]),
    ('{"id": 7, "prompt_token_ids": [5]}', ["'id'", "string"]),
    ('{"id": "r", "prompt_token_ids": [5]', ["invalid JSON", "at column 36)"]),  # where the brace is missing
    ('[1, 2]', ["JSON object"]),
    # validate_request's checks, located in the file
    ('{"id": "r", "prompt_token_ids": [5, 300]}', ["'r'", "'prompt_token_ids'", "300"]),
    ('{"id": "r", "prompt_token_ids": []}', ["'r'", "'prompt'"]),
    ('{"id": "r", "prompt_token_ids": [5], "max_tokens": 0}', ["'r'", "'max_tokens'"]),
    ('{"id": "r", "prompt_token_ids": [5], "top_p": 0}', ["'r'", "'top_p'"]),
    ('{"id": "r", "prompt_token_ids": [5], "top_k": -1}', ["'r'", "'top_k'"]),
    ('{"id": "r", "prompt_token_ids": [5], "temperature": -0.5}', ["'r'", "'temperature'"]),
    ('{"id": "r", "prompt_token_ids": [' + ", ".join(["5"] * 64) + "]}", ["'r'", "prompt has 64 tokens"]),
])
def test_jsonl_errors_name_file_line_request_and_field(tmp_path, line, fields):
    # line 1 good, line 2 blank, line 3 the bad one: blank lines still count
    with pytest.raises(RequestError) as e:
        _load(tmp_path, f"{_GOOD}\n\n{line}\n")
    msg = str(e.value)
    assert "w.jsonl:3:" in msg, msg
    for field in fields:
        assert field in msg, msg


def test_jsonl_duplicate_ids_name_both_lines(tmp_path):
    text = '{"id": "x", "prompt_token_ids": [5]}\n{"id": "y", "prompt_token_ids": [5]}\n' \
           '{"id": "x", "prompt_token_ids": [6]}\n'
    with pytest.raises(RequestError, match=r"w\.jsonl:3: request 'x': field 'id' repeats the id on line 1"):
        _load(tmp_path, text)


def test_jsonl_missing_file_names_workload_path(tmp_path):
    with pytest.raises(ConfigError, match=r"workload\.path=.*nope\.jsonl"):
        load_workload(WorkloadConfig(kind="jsonl", path=str(tmp_path / "nope.jsonl")), max_model_len=64,
                      vocab_size=VOCAB)


def test_jsonl_empty_file_is_an_error(tmp_path):
    with pytest.raises(RequestError, match="no requests"):
        _load(tmp_path, "\n\n")


def test_jsonl_poisson_arrivals_in_file_order(tmp_path):
    text = "".join(json.dumps({"id": f"r{i}", "prompt_token_ids": [5]}) + "\n" for i in range(20))
    reqs, _ = _load(tmp_path, text, arrival="poisson", rate=2.0, seed=3)
    again, _ = _load(tmp_path, text, arrival="poisson", rate=2.0, seed=3)
    times = [r.arrival_s for r in reqs]
    assert [r.id for r in reqs] == [f"r{i}" for i in range(20)]
    assert times == [r.arrival_s for r in again]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))


def test_jsonl_arrival_conflicts(tmp_path):
    with pytest.raises(RequestError, match=r"w\.jsonl:1: request 'r': field 'arrival_s' conflicts"):
        _load(tmp_path, '{"id": "r", "prompt_token_ids": [5], "arrival_s": 1}\n', arrival="poisson")
    with pytest.raises(ConfigError, match="workload.arrival='trace'"):
        _load(tmp_path, _GOOD + "\n", arrival="trace")


# ---- trace ---------------------------------------------------------------------------------------------

def _trace_csv(rows, header="arrived_at,num_prefill_tokens,num_decode_tokens"):
    return header + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows)


# Distinct prompt lengths identify the rows; arrivals deliberately not in file order.
_ROWS = [(5.0, 100, 30), (1.0, 200, 7), (3.0, 300, 12), (2.0, 400, 2), (4.0, 500, 44), (9.0, 600, 91)]


def test_trace_all_rows_sampled_once_and_scaled(tmp_path):
    reqs, _ = _load(tmp_path, _trace_csv(_ROWS), kind="trace", suffix="csv", num_requests=6, length_scale=0.1,
                    max_model_len=1000)
    pairs = sorted((len(r.prompt_token_ids), r.params.max_tokens) for r in reqs)
    # round(x * 0.1), at least 1
    assert pairs == [(10, 3), (20, 1), (30, 1), (40, 1), (50, 4), (60, 9)]
    assert [r.id for r in reqs] == [f"trace-{i}" for i in range(6)]
    assert all(r.params.ignore_eos and r.arrival_s == 0.0 for r in reqs)
    assert all(3 <= t < VOCAB for r in reqs for t in r.prompt_token_ids)


def test_trace_is_deterministic_per_seed(tmp_path):
    text = _trace_csv([(float(i), 10 + i, 1 + i % 7) for i in range(200)])
    a, b, c = (_load(tmp_path, text, kind="trace", suffix="csv", num_requests=20, seed=seed, max_model_len=1000)[0]
               for seed in (1, 1, 2))
    assert a == b
    assert [len(r.prompt_token_ids) for r in a] != [len(r.prompt_token_ids) for r in c]
    assert len({len(r.prompt_token_ids) for r in a}) == 20  # without replacement: 20 distinct rows


def test_trace_samples_with_replacement_when_short(tmp_path):
    reqs, _ = _load(tmp_path, _trace_csv(_ROWS), kind="trace", suffix="csv", num_requests=50, max_model_len=1000)
    assert len(reqs) == 50 and len({r.id for r in reqs}) == 50
    assert {len(r.prompt_token_ids) for r in reqs} <= {p for _, p, _ in _ROWS}


def test_trace_arrivals_replayed_in_order(tmp_path):
    reqs, _ = _load(tmp_path, _trace_csv(_ROWS), kind="trace", suffix="csv", num_requests=6, arrival="trace",
                    max_model_len=1000)
    assert [r.arrival_s for r in reqs] == [0.0, 1.0, 2.0, 3.0, 4.0, 8.0]
    assert [len(r.prompt_token_ids) for r in reqs] == [200, 400, 300, 500, 100, 600]
    sub, _ = _load(tmp_path, _trace_csv(_ROWS), kind="trace", suffix="csv", num_requests=3, arrival="trace",
                   max_model_len=1000, seed=5)
    by_len = {p: t for t, p, _ in _ROWS}
    first = by_len[len(sub[0].prompt_token_ids)]
    assert [r.arrival_s for r in sub] == [by_len[len(r.prompt_token_ids)] - first for r in sub]
    assert sub[0].arrival_s == 0.0 and sorted(r.arrival_s for r in sub) == [r.arrival_s for r in sub]


def test_trace_poisson_arrivals_follow_rate(tmp_path):
    rows = [(0.0, 10, 5)] * 10
    reqs, _ = _load(tmp_path, _trace_csv(rows), kind="trace", suffix="csv", num_requests=2000, arrival="poisson",
                    rate=4.0, seed=7)
    times = np.array([r.arrival_s for r in reqs])
    assert times[0] == 0.0 and np.all(np.diff(times) >= 0)
    assert np.diff(times).mean() == pytest.approx(0.25, rel=0.1)


def test_trace_arrival_needs_column(tmp_path):
    text = _trace_csv([(10, 5)], header="num_prefill_tokens,num_decode_tokens")
    reqs, _ = _load(tmp_path, text, kind="trace", suffix="csv", num_requests=1)
    assert len(reqs[0].prompt_token_ids) == 10
    with pytest.raises(ConfigError, match=r"workload\.arrival='trace'.*arrived_at.*w\.csv"):
        _load(tmp_path, text, kind="trace", suffix="csv", num_requests=1, arrival="trace")


def test_trace_trims_to_max_model_len(tmp_path, caplog):
    rows = [(0.0, 500, 20), (1.0, 10, 200), (2.0, 30, 20)]
    with caplog.at_level(logging.WARNING):
        reqs, _ = _load(tmp_path, _trace_csv(rows), kind="trace", suffix="csv", num_requests=3, arrival="trace",
                        max_model_len=100)
    assert [(len(r.prompt_token_ids), r.params.max_tokens) for r in reqs] == [(80, 20), (1, 99), (30, 20)]
    assert "trimmed 2 of 3 prompts and 1 outputs" in caplog.text


@pytest.mark.parametrize("text, where, what", [
    ("arrived_at,num_prefill_tokens\n0,5\n", ":1:", "'num_decode_tokens'"),
    ("num_prefill_tokens,num_decode_tokens\n5,6\n7,x\n", ":3:", "'x'"),
    ("num_prefill_tokens,num_decode_tokens\n5,6\n\n-7,3\n", ":4:", "'-7'"),
    ("num_prefill_tokens,num_decode_tokens\n5,6\n7\n", ":3:", "1 cells"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\nnan,5,6\n", ":2:", "'arrived_at'"),
    ("", ":1:", "empty"),
])
def test_trace_malformed_file_names_line(tmp_path, text, where, what):
    with pytest.raises(RequestError) as e:
        _load(tmp_path, text, kind="trace", suffix="csv", num_requests=1)
    assert f"w.csv{where}" in str(e.value) and what in str(e.value), str(e.value)


def test_trace_missing_file_names_workload_path(tmp_path):
    with pytest.raises(ConfigError, match=r"workload\.path=.*gone\.csv"):
        load_workload(WorkloadConfig(kind="trace", path=str(tmp_path / "gone.csv")), max_model_len=64,
                      vocab_size=VOCAB)


def test_real_splitwise_trace():
    if not os.path.exists(SPLITWISE_CONV):
        pytest.skip(f"{SPLITWISE_CONV} is not here (the traces live outside the repository)")
    cfg = WorkloadConfig(kind="trace", path=SPLITWISE_CONV, num_requests=64, length_scale=0.125, arrival="trace")
    reqs = load_workload(cfg, max_model_len=1 << 20, vocab_size=49152)
    assert load_workload(cfg, max_model_len=1 << 20, vocab_size=49152) == reqs
    rows = np.loadtxt(SPLITWISE_CONV, delimiter=",", skiprows=1)
    scaled = {(max(1, round(p * 0.125)), max(1, round(d * 0.125))) for _, p, d in rows}
    assert len(reqs) == 64 and reqs[0].arrival_s == 0.0
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(reqs, reqs[1:]))
    assert all((len(r.prompt_token_ids), r.params.max_tokens) in scaled for r in reqs)


# ---- synthetic -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("distribution, tol", [("uniform", 0.05), ("lognormal", 0.1), ("zipf", 0.15)])
def test_synthetic_means_and_determinism(distribution, tol):
    cfg = WorkloadConfig(kind="synthetic", num_requests=4000, distribution=distribution, prefill_len=64,
                         pd_ratio=4.0, seed=11)
    reqs = load_workload(cfg, max_model_len=1 << 16, vocab_size=VOCAB)
    assert reqs == load_workload(cfg, max_model_len=1 << 16, vocab_size=VOCAB)
    prompts = np.array([len(r.prompt_token_ids) for r in reqs])
    outputs = np.array([r.params.max_tokens for r in reqs])
    assert prompts.mean() == pytest.approx(64, rel=tol)
    assert outputs.mean() == pytest.approx(16, rel=tol)
    assert prompts.min() >= 1 and outputs.min() >= 1
    assert all(r.params.ignore_eos and r.arrival_s == 0.0 for r in reqs)
    assert reqs[0].id == "synthetic-0" and reqs[-1].id == "synthetic-3999"
    other = load_workload(WorkloadConfig(kind="synthetic", num_requests=4000, distribution=distribution,
                                         prefill_len=64, seed=12), max_model_len=1 << 16, vocab_size=VOCAB)
    assert [r.prompt_token_ids for r in other] != [r.prompt_token_ids for r in reqs]


def test_synthetic_uniform_bounds():
    cfg = WorkloadConfig(kind="synthetic", num_requests=2000, distribution="uniform", prefill_len=10, pd_ratio=2.0)
    reqs = load_workload(cfg, max_model_len=1000, vocab_size=VOCAB)
    assert {len(r.prompt_token_ids) for r in reqs} == set(range(1, 20))
    assert {r.params.max_tokens for r in reqs} == set(range(1, 10))


def test_synthetic_poisson_and_trace_arrivals():
    cfg = WorkloadConfig(kind="synthetic", num_requests=50, arrival="poisson", rate=10.0)
    times = [r.arrival_s for r in load_workload(cfg, max_model_len=1000, vocab_size=VOCAB)]
    assert times[0] == 0.0 and times == sorted(times) and times[-1] > 0
    with pytest.raises(ConfigError, match=r"workload\.arrival='trace'.*synthetic"):
        load_workload(WorkloadConfig(kind="synthetic", arrival="trace"), max_model_len=1000, vocab_size=VOCAB)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=1, max_size=20),
       st.integers(2, 300))
def test_random_requests_always_fit(pairs, max_model_len):
    prompts, outputs = zip(*pairs)
    reqs = requests_from_lengths(prompts, outputs, [0.0] * len(pairs), prefix="t", seed=0,
                                 max_model_len=max_model_len, vocab_size=VOCAB)
    for (p, o), r in zip(pairs, reqs):
        n, m = len(r.prompt_token_ids), r.params.max_tokens
        assert n >= 1 and m >= 1 and n + m <= max_model_len
        if max(p, 1) + max(o, 1) <= max_model_len:
            assert (n, m) == (max(p, 1), max(o, 1))


# ---- default -------------------------------------------------------------------------------------------

def test_default_needs_a_tokenizer():
    with pytest.raises(ConfigError, match="tokenizer"):
        load_workload(WorkloadConfig(), max_model_len=1000, vocab_size=VOCAB)


def test_default_plain_encoding():
    tok = CharTokenizer()
    reqs = load_workload(WorkloadConfig(max_tokens=5), tokenizer=tok, max_model_len=1000, vocab_size=VOCAB)
    assert [r.id for r in reqs] == [f"demo-{i}" for i in range(len(DEMO_PROMPTS))] and len(reqs) >= 5
    for r, text in zip(reqs, DEMO_PROMPTS):
        assert r.prompt == text and r.prompt_token_ids == tuple(tok(text)["input_ids"])
        assert r.params.greedy and r.params.max_tokens == 5 and not r.params.ignore_eos


def test_default_chat_template_as_list():
    tok = ListChatTokenizer()
    reqs = load_workload(WorkloadConfig(), tokenizer=tok, max_model_len=1000, vocab_size=VOCAB)
    assert reqs[0].prompt_token_ids == tuple(tok(f"user: {DEMO_PROMPTS[0]}\nassistant:")["input_ids"])


def test_default_chat_template_with_transformers_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in sorted(set("".join(DEMO_PROMPTS)) | set("<>usertaisn\n")):
        vocab.setdefault(c, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    reqs = load_workload(WorkloadConfig(), tokenizer=tok, max_model_len=1000, vocab_size=len(vocab))
    for r, text in zip(reqs, DEMO_PROMPTS):
        assert r.prompt_token_ids == tuple(tok(f"<user>{text}\n<assistant>")["input_ids"])
        assert vocab["<unk>"] not in r.prompt_token_ids


def test_load_workload_validates_every_request():
    # ids from the char tokenizer exceed a vocabulary of 50
    with pytest.raises(RequestError, match=r"request 'demo-0'.*'prompt_token_ids'.*\[0, 50\)"):
        load_workload(WorkloadConfig(), tokenizer=CharTokenizer(), max_model_len=1000, vocab_size=50)


def test_a_request_file_prompt_over_a_lowered_max_model_len_names_the_key_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt_token_ids": [1] * 4}) + "\n"
                    + json.dumps({"id": "b", "prompt_token_ids": [1] * 40}) + "\n")
    with pytest.raises(RequestError, match=f"{path}:2: request 'b': .*raise model.max_model_len to at least 41 "
                                           f"\\(the model's own limit is 128 positions"):
        load_workload(WorkloadConfig(kind="jsonl", path=str(path)), max_model_len=32, vocab_size=VOCAB,
                      model_limit=128)
