"""Continuous batching: every streamed row equals generate() of the same request alone, whatever its
slot, neighbours or admission time; lazy input; error results beside good ones; slot-count errors."""

import json

import numpy as np
import pytest

from dia_model import Dia, DiaError, Request, StreamStats

from test_generate import A, B, C, GOLDEN, model, prompts  # noqa: F401  (fixtures shared with generate()'s tests)


def _requests(prompts) -> list[Request]:
    """Ten requests that differ in every setting: greedy and sampled, prompts of two lengths, lengths
    from 12 to 90 frames (so rows end at different steps and slots are refilled mid-run)."""
    p20, p7 = prompts
    specs = [
        (A, 3.0, 0.0, 0.95, 45, 60, 1, None), (B, 1.5, 1.2, 0.95, 45, 40, 2, None),
        (C, 4.0, 1.8, 0.80, 20, 50, 3, p20), (A, 2.0, 1.0, 1.00, 60, 30, 4, p7),
        (B, 3.0, 0.0, 0.95, 10, 70, 5, p7), (C, 3.0, 1.2, 0.90, 45, 45, 6, None),
        (A, 3.0, 1.2, 0.95, 45, 90, 7, None), (B, 2.5, 0.9, 0.95, 30, 12, 8, p20),
        (C, 3.0, 1.2, 0.95, 45, 25, 9, None), (A, 3.5, 0.7, 0.99, 45, 55, 10, p7),
    ]
    return [Request(id=f"r{i}", text=t, cfg_scale=c, temperature=temp, top_p=p, top_k=k, max_new_frames=m,
                    seed=s, audio_prompt=pr) for i, (t, c, temp, p, k, m, s, pr) in enumerate(specs)]


def _alone(model, req: Request):
    return model.generate(req.text, cfg_scale=req.cfg_scale, temperature=req.temperature, top_p=req.top_p,
                          top_k=req.top_k, max_new_frames=req.max_new_frames, seed=req.seed,
                          audio_prompts=[req.audio_prompt], decode_audio=False)[0]


@pytest.mark.parametrize("slots", [1, 3, 16])
def test_streamed_rows_equal_generate_alone(model, prompts, slots):
    requests = _requests(prompts)
    results = list(model.stream(requests, slots=slots, decode_audio=False))
    assert sorted(r.id for r in results) == sorted(r.id for r in requests)  # each once
    by_id = {r.id: r for r in results}
    for req in requests:
        got, want = by_id[req.id], _alone(model, req)
        assert got.error is None and got.seed == req.seed
        assert got.prompt_frames == want.prompt_frames and got.ended_by_eos == want.ended_by_eos
        np.testing.assert_array_equal(got.codes, want.codes, err_msg=f"{req.id} with {slots} slots")


def test_results_come_in_finishing_order_and_slots_are_refilled(model, prompts):
    requests = _requests(prompts)
    results = list(model.stream(requests, slots=2, decode_audio=False))
    # with 2 slots, 10 requests can only all finish if slots were refilled while the other decoded;
    # the shortest-running first pair member comes back first
    assert len(results) == 10
    first_two = {r.id for r in results[:2]}
    assert first_two & {"r0", "r1", "r3"}


@pytest.mark.parametrize("lookahead", [0, None, 3])
def test_input_is_pulled_lazily(model, prompts, lookahead):
    requests = _requests(prompts)
    pulled: list[str] = []

    def producer():
        for req in requests:
            pulled.append(req.id)
            yield req

    stats = StreamStats()
    stream = model.stream(producer(), slots=2, decode_audio=False, lookahead=lookahead, stats=stats)
    first = next(stream)
    # the first result needs only the first two requests plus the lookahead (None: one per slot),
    # and the one refilling the freed slot after it is handed out at the earliest
    held = 2 + stats.lookahead
    assert stats.lookahead == (2 if lookahead is None else lookahead)
    assert len(pulled) <= held + 1 and first.id in pulled
    rest = list(stream)
    assert len(pulled) == 10 and len(rest) == 9


def test_longest_waiting_request_is_seated_first_and_none_waits_forever(model):
    """With a lookahead, a free slot takes the longest waiting request; a short one is passed over
    at most ``lookahead`` times; ``lookahead=0`` keeps arrival order."""
    lengths = [3, 40, 5, 30, 4, 35, 6, 25, 7, 20]
    requests = [Request(id=f"n{n}-{i}", text=B, max_new_frames=n, seed=i) for i, n in enumerate(lengths)]
    pulled: list[str] = []

    def producer():
        for req in requests:
            pulled.append(req.id)
            yield req

    order = [r.id for r in model.stream(producer(), slots=1, decode_audio=False, lookahead=2)]
    assert sorted(order) == sorted(r.id for r in requests)
    # one slot: the first three wait, the longest (40 frames) goes first, the short ones are overtaken
    assert order[0] == "n40-1"
    position = {rid: order.index(rid) for rid in order}
    for i, rid in enumerate(r.id for r in requests):
        # a request waits behind at most the lookahead's worth of later arrivals
        later_before = sum(1 for other in requests[i + 1:] if position[other.id] < position[rid])
        assert later_before <= 2, (rid, order)
    strict = [r.id for r in model.stream(iter(requests), slots=1, decode_audio=False, lookahead=0)]
    assert strict == [r.id for r in requests]


def test_bad_lookahead_is_refused(model):
    with pytest.raises(DiaError, match="lookahead"):
        list(model.stream([Request(id="a", text=B)], slots=1, lookahead=-1))


def test_bad_requests_come_back_as_errors_beside_good_ones(model, prompts):
    good = _requests(prompts)[:3]
    bad = [Request(id="tag", text="[S3] Who?"), Request(id="empty", text="   "),
           Request(id="frames", text=B, max_new_frames=100_000), Request(id="codes", text=B,
                                                                         audio_prompt=np.full((5, 3), 2))]
    results = list(model.stream([bad[0], good[0], bad[1], good[1], bad[2], bad[3], good[2]], slots=2,
                                decode_audio=False))
    by_id = {r.id: r for r in results}
    assert sorted(by_id) == sorted([r.id for r in good + bad])
    assert "unknown speaker tag" in by_id["tag"].error and "empty" in by_id["empty"].error
    assert "max_new_frames" in by_id["frames"].error and "audio prompt codes" in by_id["codes"].error
    assert all(by_id[r.id].frames == 0 for r in bad)
    for req in good:
        assert by_id[req.id].error is None
        np.testing.assert_array_equal(by_id[req.id].codes, _alone(model, req).codes)


def test_slot_counts_that_do_not_fit_are_refused_with_how_many_would(model):
    with pytest.raises(DiaError, match=r"slots=10000000 does not fit: .* at most \d+ slots fit"):
        next(model.stream([Request(id=0, text=B)], slots=10_000_000))
    with pytest.raises(DiaError, match="positive integer"):
        next(model.stream([Request(id=0, text=B)], slots=0))


def _cases(fmt):
    return json.loads((GOLDEN / f"cases-{fmt}.json").read_text())["cases"]


@pytest.mark.parametrize("name,fmt", [("checkpoint-0626", "0626"), ("checkpoint-v0.1", "v0.1"),
                                      ("checkpoint-hf", "0626")])
def test_golden_cases_through_stream(name, fmt):
    """Every golden case's rows, streamed together with 3 slots: greedy codes equal the reference's,
    except where the reference sizes a prompt span by a longer neighbour (batch_prompts), where a row
    equals the reference's code for that request alone (= generate() alone, checked)."""
    model = Dia.from_pretrained(GOLDEN / name, load_codec=False)
    data = np.load(GOLDEN / f"cases-{fmt}.npz")
    requests, expected = [], {}
    for case in _cases(fmt):
        n = len(case["texts"])
        lengths = {len(data[f"{case['name']}/prompt_{i}"]) for i in range(n)} if "prompt_frames" in case else {0}
        for i in range(n):
            prompt = data[f"{case['name']}/prompt_{i}"] if "prompt_frames" in case else None
            req = Request(id=(case["name"], i), text=case["texts"][i], cfg_scale=case["cfg_scale"],
                          top_k=case["cfg_filter_top_k"], temperature=0.0, top_p=0.95,
                          max_new_frames=case["max_output_frames"][i] if isinstance(case["max_output_frames"], list)
                          else case["max_output_frames"], audio_prompt=prompt)
            requests.append(req)
            if len(lengths) == 1:
                expected[req.id] = (data[f"{case['name']}/codes_{i}"], case["ended_by_eos"][i])
            else:
                alone = _alone(model, req)
                expected[req.id] = (alone.codes, alone.ended_by_eos)
    results = {r.id: r for r in model.stream(requests, slots=3, decode_audio=False)}
    assert len(results) == len(requests)
    for key, (codes, eos) in expected.items():
        assert results[key].error is None and results[key].ended_by_eos == eos, key
        np.testing.assert_array_equal(results[key].codes, codes, err_msg=str(key))


def test_the_step_keeps_every_state_tensor_in_place(model, prompts):
    """What a captured CUDA graph relies on: admissions and steps write into the same storage (only a
    longer script's cross-attention cache reallocates, and says so through ``layout``)."""
    from dia_model.engine.slot_state import SlotState

    state = SlotState(model.model, 3, model.device)
    reqs = [model.checker.check_request(Request(id=i, text=text, seed=i, max_new_frames=20, audio_prompt=p))[0]
            for i, (text, p) in enumerate([(A, None), (B, prompts[1]), (C, None)])]
    state.admit([0, 1], reqs[:2])
    tensors = lambda: [state.timeline, state.t, state.countdown, state.finished_at, state.ended_by_eos,  # noqa: E731
                       state.live, state.max_tokens, state.cache.k, state.cache.v, state.cross_mask,
                       *state.sampling.__dict__.values(), *[x for kv in state.cross_kv for x in kv]]
    before, layout = [x.data_ptr() for x in tensors()], state.layout
    positions = []
    for i in range(30):
        if i == 5:
            state.admit([2], reqs[2:])  # admission while the others run
        state.step(64, 45)
        positions.append(state.t.tolist())
    assert [x.data_ptr() for x in tensors()] == before and state.layout == layout
    assert positions[-1][0] == 30 and positions[-1][1] == 30 + len(prompts[1])  # the state really moved


def test_stream_stats_report_what_the_call_did(model, prompts):
    from dia_model import StreamStats

    stats = StreamStats()
    results = list(model.stream(_requests(prompts), slots=4, decode_audio=False, stats=stats))
    assert len(results) == 10 and stats.slots == 4 and stats.steps > 0 and stats.admissions >= 3
    assert 0.5 < stats.occupancy <= 1.0 and stats.busy_slot_steps <= stats.slot_steps
    useful = sum(r.frames + 15 for r in results)  # a slot steps through its frames and the countdown (prompts are prefilled)
    assert stats.busy_slot_steps >= useful
    assert stats.graphs_captured == 0 and stats.graph_fallback is None  # CPU: the eager step
    with pytest.raises(DiaError, match="cuda_graphs=True needs a CUDA device"):
        next(model.stream([Request(id=0, text=B)], slots=1, cuda_graphs=True))


def test_a_source_that_yields_none_is_asked_again_and_rows_still_match(model, prompts):
    """None from the iterable means "nothing ready yet": the busy slots go on decoding and later
    requests join them; every row still equals generate() alone."""
    reqs = _requests(prompts)[:5]
    pulls = []

    def source():
        for i, req in enumerate(reqs):
            for _ in range(3 * i):  # a feeder that is late more and more often
                pulls.append(None)
                yield None
            pulls.append(req.id)
            yield req
        for _ in range(50):  # idle with nothing seated for a while, then the end
            yield None

    results = {r.id: r for r in model.stream(source(), slots=2, decode_audio=False)}
    assert sorted(results) == sorted(r.id for r in reqs) and pulls.count(None) == 30
    for req in reqs:
        np.testing.assert_array_equal(results[req.id].codes, _alone(model, req).codes)
