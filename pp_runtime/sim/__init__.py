"""Pipeline simulation: the real planners on N simulated stages, with per-stage time models and links.

``simulate`` (pipeline.py) runs one configuration in virtual time (pure Python, no torch); ``output.write_sim_run``
writes the same files as a real run; ``sim_job.resolve_sim_job`` builds requests, layer split, time model and links
from a job's config; ``replay.replay`` re-simulates a recorded run and ``compare`` sets measured beside predicted
figures.
Time models (``time_model.build_time_model``): a run's fitted cost model, a per-layer profile, or a roofline.
"""

from pp_runtime.sim.links import Link, LinkModel
from pp_runtime.sim.pipeline import SimResult, fit_cost_model, simulate

__all__ = ["Link", "LinkModel", "SimResult", "fit_cost_model", "simulate"]
