"""The slot engine's host-side scheduling: which waiting request takes a free slot (``waiting.py``)
and how an eager step splits its attention reads by runs of slots (``segments.py``)."""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch

from dia_model.engine.segments import attention_segments, cross_segments, plan_runs
from dia_model.engine.waiting import WaitingRoom

from test_generate import model  # noqa: F401  (the tiny checkpoint fixture)


def _cost(runs, call_cost):
    return sum(call_cost + (e - a) * n for a, e, n in runs)


@pytest.mark.parametrize("seed", range(30))
def test_runs_cover_every_row_read_far_enough_and_cost_the_least(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    need = [rng.choice([16, 32, 64, 640, 2048]) for _ in range(n)]
    call_cost = rng.choice([0, 64, 512, 4096])
    runs = plan_runs(need, call_cost)
    assert runs[0][0] == 0 and runs[-1][1] == 2 * n
    assert all(a < e and e == runs[i + 1][0] for i, (a, e, _) in enumerate(runs[:-1]))
    for a, e, length in runs:
        assert length == max(need[a // 2: e // 2])  # far enough for each slot, no further
    # no split of the slots into contiguous runs costs less (brute force over every cut set)
    best = min(_cost([(2 * a, 2 * b, max(need[a:b])) for a, b in zip((0, *cuts), (*cuts, n))], call_cost)
               for r in range(n) for cuts in itertools.combinations(range(1, n), r))
    assert _cost(runs, call_cost) == pytest.approx(best)


def test_run_lengths_follow_the_buckets_and_the_capacity():
    runs = attention_segments([0, 3071, 10, 20], length_bucket=16, capacity=3073, call_cost=0)
    assert runs == [(0, 2, 16), (2, 4, 3073), (4, 6, 16), (6, 8, 32)]
    assert attention_segments([5, 6, 7], 16, 3073, call_cost=1e9) == [(0, 6, 16)]  # calls dear: one run
    assert cross_segments([0, 300, 40], 64, 320, call_cost=0) == [(0, 2, 64), (2, 4, 320), (4, 6, 64)]


def test_a_step_split_into_runs_gives_the_logits_of_one_call(model):  # noqa: F811
    """Each run reads only its own length / script width; the masked-off rest weighs nothing, so the
    logits are those of one call over everything (fp32, to rounding)."""
    from dia_model import Request
    from dia_model.engine.slot_state import SlotState

    torch.manual_seed(0)
    state = SlotState(model.model, 4, model.device)
    texts = ["[S1] Hi.", "[S1] A much longer script, so that its cross-attention is wider. [S2] Yes, much.",
             "[S2] Mid-length line here.", "[S1] Ok."]
    reqs = [model.checker.check_request(Request(id=i, text=t, seed=i, max_new_frames=200))[0]
            for i, t in enumerate(texts)]
    state.admit(list(range(4)), reqs)
    for _ in range(3):
        state.step(64, 45)
    state.admit([2], [reqs[2]])  # slot 2 restarts: slots now sit at different positions
    for _ in range(2):
        state.step(64, 45)
    positions = state.t.tolist()
    assert len(set(positions)) > 1
    dec = model.model.decoder
    frames = torch.randint(0, 1000, (8, model.config.channels))
    pos = state.t.repeat_interleave(2)
    self_runs = attention_segments(positions, 16, state.capacity, call_cost=0)
    cross_runs = cross_segments([len(r.script) for r in reqs], 64, state.text_capacity, call_cost=0)
    assert len(self_runs) > 1 and len(cross_runs) > 1
    with torch.inference_mode():
        one = dec.step(frames, pos, copy.deepcopy(state.cache), state.cross_kv, state.cross_mask, 64)
        split = dec.step(frames, pos, copy.deepcopy(state.cache), state.cross_kv, state.cross_mask, 64,
                         self_runs, cross_runs)
    torch.testing.assert_close(split, one, rtol=1e-5, atol=1e-5)


def test_the_longest_waits_least_and_nothing_is_passed_over_more_than_the_limit():
    room: WaitingRoom[str] = WaitingRoom(limit=2)
    for name, frames in [("a", 10), ("b", 50), ("c", 30), ("d", 50)]:
        room.add(name, frames, 0)
    assert room.take() == "b"  # the longest; of equals, the earlier (a passed over once)
    assert room.take() == "d"  # a passed over twice, c once
    assert room.take() == "a"  # a has reached the limit: it goes before anything longer
    room.add("e", 99, 0)
    assert room.take() == "e"  # c passed over a second time
    assert room.take() == "c" and len(room) == 0


def test_ties_on_frames_go_to_the_longer_script_and_zero_lookahead_keeps_arrival_order():
    room: WaitingRoom[str] = WaitingRoom(limit=5)
    room.add("short", 100, 20)
    room.add("long", 100, 200)
    assert room.take() == "long"
    strict: WaitingRoom[str] = WaitingRoom(limit=0)
    for name, frames in [("x", 1), ("y", 9), ("z", 5)]:
        strict.add(name, frames, 0)
    assert [strict.take() for _ in range(3)] == ["x", "y", "z"]
    with pytest.raises(ValueError):
        WaitingRoom(limit=-1)
