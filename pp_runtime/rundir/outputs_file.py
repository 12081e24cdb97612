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
                rid = record["id"]
            except (ValueError, TypeError, KeyError):
                raise ConfigError(f"{path}:{lineno} is not an outputs record (a JSON object with an 'id'); delete "
                                  f"or repair that line, or start over with runtime.resume=false") from None
            scan.ids.append(str(rid))
            records.append(record)
    scan.totals = _totals(records)
    return scan


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
