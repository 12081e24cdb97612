"""``pp-sim [overrides]``: simulate a job's config on N simulated stages; ``pp-sim --replay RUN_DIR``: re-simulate
a recorded run and compare.

``pp-sim`` is a Hydra app with the same config as ``pp-run`` plus the ``sim`` group (time model, links, GPUs per
node); ``pipeline.stages`` must be set. It writes outputs.jsonl, metrics.json, events.npz, trace.json,
bubbles.json and timeline.png into ``hydra.run.dir`` and prints the bubble table and the throughput.
``pp-sim --replay RUN_DIR [--out DIR] [--cost-model PATH] [--measured-times] [--fit-from-events]
[--planner-time-us US] [--preset-links]`` writes
into RUN_DIR/replay (or --out) and prints measured vs predicted figures with their relative errors.
"""

from __future__ import annotations

import argparse
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from launch.run import exit_bad_input, precheck_overrides
from launch.run_dir import discard_run_dir, files_hydra_made
from pp_runtime.config import CONFIG_PATH, Config, ConfigError, register_configs
from pp_runtime.request import RequestError

log = logging.getLogger("pp_runtime")
register_configs()


def simulate_job(cfg: Config) -> dict:
    """Simulate ``cfg``, write its run files into ``cfg.output_dir``, print the summary; returns metrics.json's dict."""
    import json
    from pathlib import Path

    from pp_runtime.planner.budget import describe
    from pp_runtime.sim.output import check_sim_out_dir, write_sim_run
    from pp_runtime.sim.sim_job import resolve_sim_job
    from pp_runtime.trace.reports import format_bubble_report

    check_sim_out_dir(cfg.output_dir)  # before simulating: a real run's directory is refused, not overwritten
    job = resolve_sim_job(cfg)
    log.info("simulating %d request(s) on %d stage(s): layers %s, %s; links %s", len(job.requests),
             cfg.pipeline.stages, [len(r) for r in job.layer_ranges], job.time_model, job.links.describe())
    result = job.run()
    bubbles = write_sim_run(cfg.output_dir, result, cfg, tokenizer=job.tokenizer, info=job.info())
    m = result.metrics
    print(format_bubble_report(bubbles, title=f"simulated {cfg.scheduler.policy}, {cfg.pipeline.stages} stage(s)",
                               slowdown=m.get("slowdown")))
    print(f"\n{m['completed']}/{m['num_requests']} requests, {m['total_output_tokens']} output tokens in "
          f"{m['duration_s']:.3f}s simulated ({m['output_throughput']:.1f} tok/s, "
          f"{m['total_token_throughput']:.1f} tok/s in+out); run files in {cfg.output_dir}")
    print(describe(m["token_budget"]))
    return json.loads((Path(cfg.output_dir) / "metrics.json").read_text())


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base=None)
def _app(dcfg: DictConfig) -> None:
    cfg: Config = OmegaConf.to_object(dcfg)
    cfg.output_dir = HydraConfig.get().runtime.output_dir
    made = files_hydra_made(dcfg)
    try:
        simulate_job(cfg)
    except (ConfigError, RequestError, FileNotFoundError) as exc:
        discard_run_dir(made)  # nothing ran: no run directory left behind
        exit_bad_input(exc)


def precheck_run_dir(argv: list[str]) -> None:
    """Refuse (exit 2) a ``hydra.run.dir`` given on the command line that holds a real run's files, before Hydra
    writes its ``.hydra/`` and log there (a value with ``${...}`` is checked once resolved, before any output)."""
    from pp_runtime.sim.output import check_sim_out_dir

    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if given and "${" not in given[-1]:
        try:
            check_sim_out_dir(given[-1])
        except ConfigError as exc:
            exit_bad_input(exc)


def replay_main(argv: list[str]) -> int:
    """``pp-sim --replay``; returns the exit code (2 for a run directory that cannot be replayed)."""
    from pp_runtime.sim.compare import format_comparison
    from pp_runtime.sim.replay import ReplayError, replay

    parser = argparse.ArgumentParser(prog="pp-sim --replay", description="re-simulate a recorded run and compare")
    parser.add_argument("--replay", required=True, metavar="RUN_DIR", help="run directory written by pp-run")
    parser.add_argument("--out", default=None, help="where the simulated run goes (default: RUN_DIR/replay)")
    parser.add_argument("--cost-model", default=None, help="cost_model.json to use instead of the run's own")
    parser.add_argument("--measured-times", action="store_true",
                        help="use the run's measured compute durations instead of a cost model")
    parser.add_argument("--fit-from-events", action="store_true",
                        help="a run without cost_model.json: fit one to its own compute events (in-sample)")
    parser.add_argument("--planner-time-us", type=float, default=None,
                        help="charge this constant planner time per schedule call (default: measure it)")
    parser.add_argument("--preset-links", action="store_true",
                        help="use sim.link's preset links instead of links fitted to the run's events")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        result, rows = replay(args.replay, out_dir=args.out, cost_model_path=args.cost_model,
                              measured_times=args.measured_times, fit_from_events=args.fit_from_events,
                              planner_time_us=args.planner_time_us,
                              preset_links=args.preset_links)
    except (ReplayError, ConfigError, RequestError, FileNotFoundError) as exc:
        print(f"pp-sim: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(rows, title=f"{args.replay}: measured vs replayed "
                                        f"({result.metrics['policy']}, {result.metrics['stages']} stage(s))"))
    return 0


def main() -> None:
    if any(a == "--replay" or a.startswith("--replay=") for a in sys.argv[1:]):
        sys.exit(replay_main(sys.argv[1:]))
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print("pp-sim [overrides]: simulate the job's config on pipeline.stages simulated stages (Hydra's help below)\n"
              "pp-sim --replay RUN_DIR [--out DIR] [--cost-model PATH] [--measured-times] [--fit-from-events]\n"
              "       [--planner-time-us US] [--preset-links]: re-simulate a recorded run (pp-sim --replay x --help)\n")
    precheck_overrides(sys.argv[1:])
    precheck_run_dir(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
