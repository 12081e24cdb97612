import json
import os

import numpy as np
import pytest

from launch.report import main
from pp_runtime.trace.reports import load_clock_errors, load_events, write_reports
from pp_runtime.trace.tracer import EventKind

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
C, W = EventKind.COMPUTE, EventKind.WAIT


def _events(gap_ns: int):
    # Three stages, four micro-batches of 1 ms each, with gap_ns between consecutive micro-batches.
    events = {}
    for stage in range(3):
        rows = []
        for mb in range(4):
            start = (stage + mb) * 1_000_000 + mb * gap_ns
            rows.append((C, start, start + 1_000_000, mb, 32 if mb == 0 else 0, 0 if mb == 0 else 4))
            rows.append((W, start - 1000, start, mb, 0, 0))
        events[stage] = np.array(rows, dtype=np.int64)
    return events


def test_write_reports_writes_every_file(tmp_path):
    events = _events(200_000)
    bubbles = write_reports(str(tmp_path), events, policy="sarathi", clock_errors_ns={1: 1500, 2: 900})
    for name in ("events.npz", "trace.json", "bubbles.json", "timeline.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "timeline.png").read_bytes()[:8] == PNG_MAGIC
    on_disk = json.loads((tmp_path / "bubbles.json").read_text())
    assert on_disk == bubbles and on_disk["policy"] == "sarathi"
    assert [on_disk["stages"][s]["clock_error_ns"] for s in "012"] == [0, 1500, 900]
    loaded = load_events(str(tmp_path))
    assert sorted(loaded) == [0, 1, 2] and all(np.array_equal(loaded[s], events[s]) for s in events)
    assert load_clock_errors(str(tmp_path)) == {0: 0, 1: 1500, 2: 900}
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert sum(e["ph"] == "X" for e in trace["traceEvents"]) == 24


def test_write_reports_without_timeline(tmp_path):
    write_reports(str(tmp_path), _events(0), policy="fcfs", clock_errors_ns={}, timeline=False)
    assert not (tmp_path / "timeline.png").exists() and (tmp_path / "bubbles.json").exists()


def test_pp_report_compares_two_runs(tmp_path, capsys):
    a, b, out = tmp_path / "run_a", tmp_path / "run_b", tmp_path / "cmp"
    write_reports(str(a), _events(0), policy="sarathi", clock_errors_ns={}, timeline=False)
    (a / "metrics.json").write_text(json.dumps({"output_throughput": 123.456}))
    write_reports(str(b), _events(500_000), policy="orca", clock_errors_ns={}, timeline=False)
    (b / "bubbles.json").unlink()  # the policy must then come from the Hydra config
    (b / ".hydra").mkdir()
    (b / ".hydra" / "config.yaml").write_text("scheduler:\n  policy: vllm\n")
    (b / "metrics.json").write_text(json.dumps({"tokens_per_s": 50}))

    assert main([str(a), str(b), "--out", str(out)]) == 0

    for run in (a, b):
        assert (run / "timeline.png").read_bytes()[:8] == PNG_MAGIC
        assert (run / "trace.json").exists()
    assert json.loads((b / "bubbles.json").read_text())["policy"] == "vllm"
    lines = (out / "comparison.md").read_text().strip().splitlines()
    assert len(lines) == 4  # header, rule, two runs
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0][:3] == ["run", "policy", "tokens/s"] and len(cells[0]) == 3 + 3 + 2 + 4
    assert cells[2][:3] == ["run_a", "sarathi", "123.5"]
    assert cells[3][:3] == ["run_b", "vllm", "50.0"]
    # Run a has no gaps: only fill and drain bubbles; stage 0 is idle 2 of 6 ms.
    assert cells[2][3] == "33.3%" and cells[2][7] == "0.000"  # median bubble ms, before the slowdown columns
    assert cells[3][7] == "0.500" and cells[3][8:] == [""] * 4  # median gap 0.5 ms in run b; no slowdown
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC


def _slowdown(median_ttft: float, jain_ttft: float) -> dict:
    return {"num_requests": 6, "mean_ttft": 2.0, "median_ttft": median_ttft, "p90_ttft": 4.0, "max_ttft": 5.0,
            "jain_ttft": jain_ttft, "mean_e2e": 1.5, "median_e2e": 1.25, "p90_e2e": 2.0, "max_e2e": 2.5,
            "jain_e2e": 0.95}


def test_pp_report_labels_the_prefill_order_and_prints_each_runs_fairness(tmp_path, capsys):
    runs = {name: tmp_path / name for name in ("fair", "fcfs", "hydra_null", "orca")}
    for run in runs.values():
        write_reports(str(run), _events(0), policy="orca" if run.name == "orca" else "sarathi", clock_errors_ns={},
                      timeline=False)
    for order, jain in (("fair", 0.577), ("fcfs", 0.526)):
        (runs[order] / "metrics.json").write_text(json.dumps({
            "output_throughput": 22.0, "slowdown": _slowdown(3.65, jain),
            "config": {"scheduler": {"policy": "sarathi", "prefill_order": order}}}))
    (runs["hydra_null"] / ".hydra").mkdir()  # no metrics.json (a run that died): the order from the Hydra config
    (runs["hydra_null"] / ".hydra" / "config.yaml").write_text("scheduler:\n  policy: sarathi\n  prefill_order: null\n")
    (runs["orca"] / "metrics.json").write_text(json.dumps({
        "output_throughput": 20.0, "config": {"scheduler": {"policy": "orca", "prefill_order": "fair"}}}))

    assert main([*map(str, runs.values()), "--out", str(tmp_path / "cmp")]) == 0

    text = capsys.readouterr().out
    assert f"{runs['fair']}: sarathi/fair," in text and f"{runs['fcfs']}: sarathi/fcfs," in text
    assert f"{runs['hydra_null']}: sarathi/fair," in text and f"{runs['orca']}: orca," in text
    fairness = [line.strip() for line in text.splitlines() if "slowdown vs alone" in line]
    assert fairness == [
        "slowdown vs alone, 6 requests: TTFT median 3.65 p90 4.00 max 5.00; e2e median 1.25 p90 2.00 max 2.50; "
        f"Jain's index TTFT {jain} e2e 0.950" for jain in ("0.577", "0.526")]
    assert json.loads((runs["fcfs"] / "bubbles.json").read_text())["policy"] == "sarathi"  # bubbles.json unchanged
    lines = (tmp_path / "cmp" / "comparison.md").read_text().strip().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0][-4:] == ["TTFT slowdown p50", "Jain TTFT", "e2e slowdown p50", "Jain e2e"]
    assert [row[1] for row in cells[2:]] == ["sarathi/fair", "sarathi/fcfs", "sarathi/fair", "orca"]
    assert cells[2][-4:] == ["3.65", "0.577", "1.25", "0.950"] and cells[5][-4:] == ["", "", "", ""]


def test_the_comparison_plot_labels_carry_order_and_fairness(monkeypatch, tmp_path):
    from pp_runtime.trace import timeline
    from pp_runtime.trace.bubbles import compute_bubbles

    seen = []
    import matplotlib.figure

    real = matplotlib.figure.Figure.legend
    monkeypatch.setattr(matplotlib.figure.Figure, "legend",
                        lambda self, handles, labels, **kw: (seen.append(labels), real(self, handles, labels, **kw))[1])
    bubbles = compute_bubbles(_events(0))
    rows = [{"run": "a", "policy": "sarathi/fcfs", "tokens_per_s": 1.0, "bubbles": bubbles,
             "slowdown": _slowdown(3.66, 0.526)},
            {"run": "b", "policy": "orca", "tokens_per_s": None, "bubbles": bubbles}]
    timeline.draw_comparison(rows, str(tmp_path / "c.png"))
    assert ["a\n(sarathi/fcfs)\nTTFT slowdown 3.66 (p50)\nJain 0.526", "b\n(orca)"] in seen


def test_pp_report_single_run_writes_no_comparison(tmp_path, monkeypatch):
    write_reports(str(tmp_path / "r"), _events(0), policy="static", clock_errors_ns={}, timeline=False)
    events = tmp_path / "r" / "events.npz"
    os.utime(events, ns=(1_000_000_000, 1_000_000_000))
    monkeypatch.chdir(tmp_path)
    assert main([str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "timeline.png").exists() and not (tmp_path / "comparison.md").exists()
    assert events.stat().st_mtime_ns == 1_000_000_000  # its input is read, not rewritten
    assert json.loads((tmp_path / "r" / "bubbles.json").read_text())["policy"] == "static"


@pytest.mark.parametrize("setup", ["missing", "no_events", "corrupt"])
def test_pp_report_bad_run_dir_exits_2_naming_it(tmp_path, capsys, setup):
    good = tmp_path / "good"
    write_reports(str(good), _events(0), policy="fcfs", clock_errors_ns={}, timeline=False)
    bad = tmp_path / "bad_run"
    if setup != "missing":
        bad.mkdir()
    if setup == "corrupt":
        (bad / "events.npz").write_bytes(b"not a zip")
    assert main([str(good), str(bad), "--out", str(tmp_path)]) == 2
    assert "bad_run" in capsys.readouterr().err
    # Nothing was written before the bad directory was found.
    assert not (good / "timeline.png").exists() and not (tmp_path / "comparison.md").exists()
    assert not (tmp_path / "comparison.png").exists()
