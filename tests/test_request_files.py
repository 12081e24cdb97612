"""Request files: chat ``messages`` through the model's chat template, raw ``prompt``, token ids; OpenAI Batch API
files read as they are and answered in the Batch API's output shape (resume and the ids check still work);
files that are not UTF-8 fail as bad input naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pp_runtime.config import WorkloadConfig
from pp_runtime.request import RequestError
from pp_runtime.rundir.outputs_file import scan_outputs
from pp_runtime.workloads.jsonl import load_jsonl
from tests.tiny_models import VOCAB

_WORDS = ["<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "Hello", "there", "What", "is", "2",
          "+", "?", "Be", "brief."]
_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_tokenizer(*, chat: bool = True):
    """A whitespace word-level tokenizer over a few words (ids < VOCAB), with a chat template unless ``chat``
    is False."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_WORDS)} | {f"w{i}": i for i in range(len(_WORDS), VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat:
        tok.chat_template = _TEMPLATE
    return tok


def _load(tmp_path: Path, lines: list[dict] | bytes, tokenizer=None):
    path = tmp_path / "r.jsonl"
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return load_jsonl(WorkloadConfig(kind="jsonl", path=str(path)), tokenizer=tokenizer, max_model_len=256,
                      vocab_size=VOCAB)


def _ids(tok, text):
    return tuple(tok(text)["input_ids"])


def test_messages_go_through_the_chat_template_and_prompt_stays_raw(tmp_path):
    tok = tiny_tokenizer()
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2 ?"}]
    reqs = _load(tmp_path, [{"id": "c", "messages": chat}, {"id": "p", "prompt": "Hello there"}], tok)
    assert reqs[0].prompt_token_ids == _ids(tok, "<|system|> Be brief. <|user|> What is 2 + 2 ? <|assistant|>")
    assert reqs[1].prompt_token_ids == _ids(tok, "Hello there")
    assert reqs[0].prompt == "What is 2 + 2 ?" and reqs[0].api_url is None


def test_messages_for_a_model_without_a_chat_template_name_the_alternatives(tmp_path):
    with pytest.raises(RequestError, match=r"r.jsonl:1: request 'c': field 'messages' needs the model's chat "
                                           r"template.*'prompt'.*'prompt_token_ids'"):
        _load(tmp_path, [{"id": "c", "messages": [{"role": "user", "content": "Hello"}]}], tiny_tokenizer(chat=False))


@pytest.mark.parametrize("line", [{"id": "c", "messages": [{"role": "user", "content": "Hello"}]},
                                  {"id": "c", "prompt": "Hello"}], ids=["messages", "prompt"])
def test_text_on_a_shape_preset_without_tokenizer_names_prompt_token_ids_which_then_runs(tmp_path, line):
    from pp_runtime.sim.sim_job import resolve_sim_job
    from tests.jobs import make_config

    def sim_job(lines):
        path = tmp_path / "r.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return resolve_sim_job(make_config(["pipeline.stages=2", "sim.model_shape=llama-3.2-1b",
                                            "sim.cost_model=roofline", "workload=jsonl", f"workload.path={path}"]))

    with pytest.raises(RequestError) as exc:
        sim_job([line])
    message = str(exc.value)
    assert f"field {next(iter(set(line) - {'id'}))!r}" in message and "no tokenizer" in message
    # The advice is the one prompt that works without a tokenizer; text ('prompt') is refused too, so not named.
    assert "'prompt_token_ids'" in message and "'prompt' (" not in message
    assert sim_job([{"id": "c", "prompt_token_ids": [5, 6, 7]}]).requests[0].prompt_token_ids == (5, 6, 7)


def test_a_batch_chat_line_without_tokenizer_names_a_completions_line_with_token_ids(tmp_path):
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}}
    with pytest.raises(RequestError, match=r"no tokenizer.*/v1/completions line whose body 'prompt' is a list of "
                                           r"token ids"):
        _load(tmp_path, [line])
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": [5, 6]}}
    assert _load(tmp_path, [line])[0].prompt_token_ids == (5, 6)


def test_an_openai_batch_file_is_read_as_is(tmp_path):
    tok = tiny_tokenizer()
    lines = [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3,
                  "temperature": 0.5, "seed": 7}},
        {"custom_id": "b", "method": "POST", "url": "/v1/completions",
         "body": {"model": "m", "prompt": [5, 6, 7], "max_completion_tokens": 2}},
    ]
    a, b = _load(tmp_path, lines, tok)
    assert (a.id, a.api_url, a.api_model) == ("a", "/v1/chat/completions", "m")
    assert a.prompt_token_ids == _ids(tok, "<|user|> Hello <|assistant|>")
    assert (a.params.max_tokens, a.params.temperature, a.params.seed) == (3, 0.5, 7)
    assert (b.prompt_token_ids, b.params.max_tokens, b.api_url) == ((5, 6, 7), 2, "/v1/completions")


@pytest.mark.parametrize("line, where", [
    ({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}, "'url'"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "logit_bias": {}}},
     "'body.logit_bias'"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"prompt": "x"}}, "'body.messages'"),
])
def test_batch_lines_name_the_field_to_change(tmp_path, line, where):
    with pytest.raises(RequestError, match=r"r.jsonl:1: request \"a\": .*" + where):
        _load(tmp_path, [line], tiny_tokenizer())


def test_one_file_holds_one_shape(tmp_path):
    lines = [{"id": "x", "prompt_token_ids": [5]},
             {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": [5]}}]
    with pytest.raises(RequestError, match=r"r.jsonl:2: .*line 1"):
        _load(tmp_path, lines)


@pytest.mark.parametrize("data, line", [
    ('{"id": "a", "prompt": "caf\u00e9"}\n'.encode("utf-16"), 1),
    ('{"id": "a", "prompt_token_ids": [5]}\n{"id": "b", "prompt": "caf\u00e9"}\n'.encode("latin-1"), 2),
])
def test_a_file_that_is_not_utf8_is_bad_input_naming_file_and_line(tmp_path, data, line):
    with pytest.raises(RequestError, match=rf"r.jsonl:{line}: .*save it as UTF-8"):
        _load(tmp_path, data, tiny_tokenizer())


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    assert _load(tmp_path, b'\xef\xbb\xbf{"id": "a", "prompt_token_ids": [5]}\n')[0].id == "a"


@pytest.mark.job
def test_a_batch_file_job_writes_batch_output_lines_and_resumes(tmp_path):
    from tests.jobs import run_job_ranks
    from tests.tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "model", num_layers=2)
    tiny_tokenizer().save_pretrained(model)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 3,
                       "ignore_eos": True}} for i in range(3)]
    lines.append({"custom_id": "long", "method": "POST", "url": "/v1/completions",
                  "body": {"prompt": [5] * 100, "max_tokens": 3}})  # cannot fit the cache: rejected, status 400
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "run"
    job = [f"model.path={model}", "workload=jsonl", f"workload.path={path}", f"output_dir={out}",
           "cache.block_size=16", "cache.num_blocks=4", "tracer.enabled=false"]
    metrics = run_job_ranks(2, job)
    assert metrics["ids_check"]["ok"]
    records = {r["custom_id"]: r for r in map(json.loads, (out / "outputs.jsonl").read_text().splitlines())}
    assert set(records) == {"q0", "q1", "q2", "long"}
    body = records["q0"]["response"]["body"]
    assert records["q0"]["response"]["status_code"] == 200 and records["q0"]["error"] is None
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert records["long"]["response"]["status_code"] == 400 and records["long"]["error"]["code"] == "rejected"
    # The Batch API's schema has no slowdown: it rides in pp-runtime's own record, null for the rejected request.
    assert set(records["q0"]) == {"id", "custom_id", "response", "error", "pp_runtime"}
    assert records["q0"]["pp_runtime"]["slowdown"]["ttft"] > 0 and records["long"]["pp_runtime"]["slowdown"] is None
    # The resume machinery reads Batch API lines: a rerun finds every request done.
    assert scan_outputs(out / "outputs.jsonl").totals["completed"] == 3
    again = run_job_ranks(2, job)
    assert again["resumed"] == 4 and again["ids_check"]["ok"]
    assert len((out / "outputs.jsonl").read_text().splitlines()) == 4
