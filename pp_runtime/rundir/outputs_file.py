"""``outputs.jsonl`` read back: which requests it holds, a torn last line, totals, and the no-request-lost check.

Rank 0 is its only writer and appends one complete line per finished request (``json + "\\n"`` in one write,
flushed). A kill can still cut the last write short: a last line without its newline is *torn*; it is
discarded and that request computed again. Any other line that is not a JSON object with an ``id`` is damage
that no kill leaves behind, so reading the file fails and names the line.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pp_runtime.config import ConfigError

OUTPUTS_FILE = "outputs.jsonl"
_SHOWN = 20  # ids listed in a report; the counts are always complete


@dataclass
class OutputScan:
    ids: list[str] = field(default_factory=list)  # the id of every complete line, in file order, repeats kept
    valid_bytes: int = 0  # the file's length up to the end of its last complete line
    torn: bool = False  # the file ends in an unterminated line (cut to valid_bytes before appending)
    totals: dict = field(default_factory=lambda: _totals([]))
    records: list[dict] = field(default_factory=list)  # every complete line, parsed


def scan_outputs(path: str | Path) -> OutputScan:
    """Read ``path`` (a missing file is an empty one); raises ConfigError for a damaged line before the last."""
    path = Path(path)
    scan = OutputScan()
    if not path.exists():
        return scan
    records = scan.records
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                scan.torn = True  # the last write of a killed job: dropped, that request runs again
                break
            scan.valid_bytes += len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rid = record["custom_id"] if "custom_id" in record else record["id"]
                record = record.get("pp_runtime", record)  # a Batch API line carries pp-runtime's own record
            except (ValueError, TypeError, KeyError, AttributeError):
                raise ConfigError(f"{path}:{lineno} is not an outputs record (a JSON object with an 'id' or "
                                  f"'custom_id'); delete or repair that line, or start over with "
                                  f"runtime.resume=false") from None
            scan.ids.append(str(rid))
            records.append(record)
    scan.totals = _totals(records)
    return scan


def output_line(record: dict, request, *, model: str, created: int) -> dict:
    """The ``outputs.jsonl`` line of a finished request: pp-runtime's ``record`` (``rundir.metrics.request_record``)
    as is, or, for a request read from an OpenAI Batch API file (``request.api_url`` set), a line of the Batch
    API's output file as vLLM's ``run-batch`` writes it: ``id``, ``custom_id``, ``response`` (``status_code``,
    ``request_id``, ``body``: a chat.completion or text_completion with ``choices`` and ``usage``) and ``error``
    (a rejected request: status 400, no body, the reason), plus ``pp_runtime`` (the record: token ids, TTFT...),
    which batch tooling ignores and the resume machinery reads. ``created``: Unix seconds."""
    if request.api_url is None:
        return record
    rid = record["id"]
    if record["finish_reason"] == "rejected" or record.get("error"):
        response = {"status_code": 400, "request_id": f"pp-runtime-{rid}", "body": None}
        error = {"code": record["finish_reason"] or "error", "message": record.get("error") or ""}
    else:
        text = record.get("text")
        chat = request.api_url.endswith("/chat/completions")
        choice = {"index": 0, **({"message": {"role": "assistant", "content": text}} if chat else {"text": text}),
                  "logprobs": None, "finish_reason": record["finish_reason"]}
        completion = len(record["output_token_ids"])
        body = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{rid}", "object": "chat.completion" if chat else
                "text_completion", "created": created, "model": request.api_model or model, "choices": [choice],
                "usage": {"prompt_tokens": record["prompt_tokens"], "completion_tokens": completion,
                          "total_tokens": record["prompt_tokens"] + completion}}
        response, error = {"status_code": 200, "request_id": f"pp-runtime-{rid}", "body": body}, None
    return {"id": f"pp-runtime-{rid}", "custom_id": rid, "response": response, "error": error, "pp_runtime": record}


def _totals(records: list[dict]) -> dict:
    # "completed" and "rejected" as pp_runtime.rundir.metrics.compute_metrics defines them, over the file's records.
    done = [r for r in records if r.get("finish_reason") != "rejected" and not r.get("error")]
    return {
        "requests": len(records),
        "completed": len(done),
        "rejected": sum(r.get("finish_reason") == "rejected" for r in records),
        "total_input_tokens": sum(r.get("prompt_tokens", 0) for r in done),
        "total_output_tokens": sum(len(r.get("output_token_ids", ())) for r in done),
    }


def check_ids(input_ids: list[str], output_ids: list[str]) -> dict:
    """Compare the job's request ids with the ids in outputs.jsonl: each input id must appear exactly once.

    Returns counts and (the first few) ids that are ``missing``, ``duplicated``, or ``unknown`` (in the file
    but not in the input: only after ``runtime.resume=force`` with a changed request file). ``ok`` is False
    when any id is missing or duplicated.
    """
    counts = Counter(output_ids)
    wanted = set(input_ids)
    missing = [i for i in input_ids if i not in counts]
    duplicated = [i for i, n in counts.items() if n > 1]
    unknown = [i for i in counts if i not in wanted]
    return {
        "ok": not missing and not duplicated,
        "num_input": len(input_ids),
        "num_output_lines": len(output_ids),
        "num_missing": len(missing), "missing": missing[:_SHOWN],
        "num_duplicated": len(duplicated), "duplicated": duplicated[:_SHOWN],
        "num_unknown": len(unknown), "unknown": unknown[:_SHOWN],
    }


def describe_ids_problem(check: dict) -> str:
    """One sentence for a failed ``check_ids``: what is missing or repeated, with a few ids."""
    parts = []
    if check["num_missing"]:
        parts.append(f"{check['num_missing']} request id(s) of the input have no line (e.g. {check['missing'][:5]})")
    if check["num_duplicated"]:
        parts.append(f"{check['num_duplicated']} id(s) appear more than once (e.g. {check['duplicated'][:5]})")
    return "; ".join(parts) or "every request id appears exactly once"
