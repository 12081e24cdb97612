"""Pipeline simulation: the real planners on N simulated stages, with per-stage time models and links.

``simulate`` runs one configuration in virtual time (pure Python, no torch); ``write_sim_run`` writes the same
files as a real run; ``prepare_sim`` builds requests, layer split, time model and links from a job's config;
``replay`` re-simulates a recorded run.
"""

from pp_runtime.sim.links import Link, LinkModel
from pp_runtime.sim.pipeline import SimResult, fit_cost_model, simulate

__all__ = ["Link", "LinkModel", "SimResult", "fit_cost_model", "simulate"]
