"""planner.loop.run: the one rank-0 loop, on a virtual clock (the runtime's wall clock is tested by the jobs)."""

from __future__ import annotations

from pp_runtime.config import SchedulerConfig
from pp_runtime.planner import make_planner
from pp_runtime.planner.loop import SerialClock, run
from pp_runtime.request import Request, SamplingParams


def _planner(num_requests: int, *, depth: int = 3):
    planner = make_planner(SchedulerConfig(policy="fcfs", token_budget=8, chunk_size=8), num_blocks=256,
                           block_size=4, num_slots=depth, max_model_len=256)
    for i in range(num_requests):
        planner.add_request(Request(f"r{i}", tuple(range(2, 12)), SamplingParams(max_tokens=4)))
    return planner


class _StopAfter(SerialClock):
    def __init__(self, launches: int):
        super().__init__(lambda mb: 1e-3, lambda piece: 7)
        self.launches, self.launched, self.returned = launches, [], []

    def launch(self, mb):
        self.launched.append(mb.id)
        return super().launch(mb)

    def receive(self, mb, back):
        self.returned.append(mb.id)
        super().receive(mb, back)

    def stop_requested(self) -> bool:
        return len(self.launched) >= self.launches


def test_a_stop_request_admits_no_more_and_brings_back_what_is_in_flight():
    planner = _planner(6)
    clock = _StopAfter(4)
    result = run(planner, clock, drain_timeout_s=0.0)
    assert result.stopped_early and result.micro_batches == 4
    assert clock.returned == clock.launched  # nothing left in flight, in launch order
    assert planner.has_unfinished()


def test_a_drain_serves_the_running_requests_to_the_end():
    planner = _planner(6)
    clock = _StopAfter(1)
    finished = []
    result = run(planner, clock, drain_timeout_s=1e9, on_finish=finished.append)
    running = {s.request.id for s in planner.seqs if s.output_token_ids}
    assert {s.request.id for s in finished} == running  # every admitted request finished, no other one started
    assert result.stopped_early == (len(running) < 6)


def test_without_a_stop_every_request_finishes():
    planner = _planner(5)
    finished = []
    result = run(planner, SerialClock(lambda mb: 1e-3, lambda piece: 7), on_finish=finished.append)
    assert not result.stopped_early and len(finished) == 5 and not planner.has_unfinished()
