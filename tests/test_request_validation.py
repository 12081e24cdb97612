"""validate_request: every bad field gives a RequestError that names the request and the field to change."""

from __future__ import annotations

import dataclasses

import pytest

from pp_runtime.request import Request, RequestError, SamplingParams, validate_request

MAX_LEN, VOCAB = 16, 100


def _check(req: Request) -> None:
    validate_request(req, max_model_len=MAX_LEN, vocab_size=VOCAB)


def _req(prompt=(5, 6, 7), arrival_s: float = 0.0, **params) -> Request:
    return Request("req-42", tuple(prompt), SamplingParams(**params), arrival_s=arrival_s)


def test_valid_requests_pass_including_boundaries():
    _check(_req())
    _check(_req(prompt=[0] * (MAX_LEN - 1)))  # one slot left for an output token
    _check(_req(prompt=[0, VOCAB - 1]))
    _check(_req(max_tokens=1, temperature=0.0, top_p=1.0, top_k=0))
    _check(_req(temperature=1.5, top_p=1e-6, top_k=1, seed=3, arrival_s=0.0))
    _check(_req(arrival_s=12.5))


@pytest.mark.parametrize("req, field", [
    (_req(prompt=()), "prompt"),
    (_req(prompt=[1] * MAX_LEN), "max_model_len"),
    (_req(prompt=[1] * (MAX_LEN + 5)), "max_model_len"),
    (_req(prompt=[1, VOCAB]), "prompt_token_ids"),
    (_req(prompt=[-1, 2]), "prompt_token_ids"),
    (_req(max_tokens=0), "max_tokens"),
    (_req(max_tokens=-3), "max_tokens"),
    (_req(temperature=-0.1), "temperature"),
    (_req(top_p=0.0), "top_p"),
    (_req(top_p=1.01), "top_p"),
    (_req(top_p=-0.5), "top_p"),
    (_req(top_k=-1), "top_k"),
    (_req(arrival_s=-0.5), "arrival"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_field_names_request_and_field(req, field):
    with pytest.raises(RequestError) as exc:
        _check(req)
    msg = str(exc.value)
    assert "req-42" in msg
    assert field in msg


def test_out_of_vocab_error_names_the_bad_token():
    with pytest.raises(RequestError, match=r"token id 100 .*\[0, 100\)"):
        _check(_req(prompt=[3, 100, 4]))


def test_too_long_prompt_error_says_the_limit():
    with pytest.raises(RequestError, match=f"{MAX_LEN} tokens but the job allows at most {MAX_LEN - 1} .*; shorten "
                                           f"the prompt \\(this is the model's own limit"):
        _check(_req(prompt=[1] * MAX_LEN))


def test_a_prompt_refused_by_a_lowered_max_model_len_names_the_key_and_the_models_own_limit():
    with pytest.raises(RequestError) as exc:
        validate_request(_req(prompt=[1] * 20), max_model_len=MAX_LEN, vocab_size=VOCAB, model_limit=64)
    assert "model.max_model_len=16" in str(exc.value)
    assert "raise model.max_model_len to at least 21 (the model's own limit is 64 positions" in str(exc.value)
    # Too long for the model itself: only shortening helps, and the message says how far.
    with pytest.raises(RequestError, match="shorten the prompt: even the model's own limit, 64 positions, allows at "
                                           "most 63"):
        validate_request(_req(prompt=[1] * 64), max_model_len=MAX_LEN, vocab_size=VOCAB, model_limit=64)


def test_negative_arrival_names_the_arrival_s_field():
    with pytest.raises(RequestError, match="arrival_s"):
        _check(_req(arrival_s=-1.0))


@pytest.mark.parametrize("req", [_req(temperature=float("nan")), _req(arrival_s=float("nan"))],
                         ids=["temperature", "arrival_s"])
def test_nan_is_rejected(req):
    with pytest.raises(RequestError, match="req-42"):
        _check(req)


def test_request_error_is_a_value_error():
    assert issubclass(RequestError, ValueError)


def test_greedy_means_temperature_zero():
    assert SamplingParams().greedy
    assert not dataclasses.replace(SamplingParams(), temperature=0.7).greedy
