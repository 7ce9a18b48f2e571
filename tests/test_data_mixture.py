"""The source mixture: law, run-time changes, determinism, resumption, rank disjointness."""

from __future__ import annotations

import pytest

from dimo.data.mixture import MixtureSampler, MixtureStream

COUNTS = {"internet": 40, "ue5": 30, "multiview": 20}


def _stream(weights=None, cross_view=0.0, seed=0, global_batch=8) -> MixtureStream:
    s = MixtureStream(weights or {"internet": 1, "ue5": 1, "multiview": 1}, cross_view, seed=seed)
    s.bind(COUNTS, global_batch)
    return s


def _draws(stream: MixtureStream, n_batches: int) -> list:
    return [k for _ in range(n_batches) for k in stream.draw()]


def test_single_source_weight_gives_only_that_source():
    keys = _draws(_stream({"internet": 1}, cross_view=1.0), 50)
    assert {k.source for k in keys} == {"internet"}
    assert {k.task for k in keys} == {"reconstruction"}  # single-view clips cannot be cross-view
    keys = _draws(_stream({"multiview": 1}, cross_view=1.0), 10)
    assert {(k.source, k.task) for k in keys} == {("multiview", "cross_view")}


def test_frequencies_follow_weights_after_a_change():
    stream = _stream({"internet": 1})
    _draws(stream, 5)
    stream.set_mixture({"internet": 0.2, "ue5": 0.3, "multiview": 0.5}, cross_view=0.4)
    keys = _draws(stream, 250)  # 2,000 draws under the new law
    assert len(keys) == 2000
    for source, want in (("internet", 0.2), ("ue5", 0.3), ("multiview", 0.5)):
        freq = sum(k.source == source for k in keys) / len(keys)
        assert abs(freq - want) < 0.03, (source, freq)
    multi = [k for k in keys if k.source != "internet"]
    cross = sum(k.task == "cross_view" for k in multi) / len(multi)
    assert abs(cross - 0.4) < 0.03


def test_change_applies_from_the_next_batch():
    stream = _stream({"internet": 1})
    first = stream.draw()
    stream.set_mixture({"ue5": 1}, 0.0)
    second = stream.draw()
    assert {k.source for k in first} == {"internet"} and {k.source for k in second} == {"ue5"}


def test_same_seed_same_stream_other_seed_other_stream():
    a, b, c = _stream(seed=3), _stream(seed=3), _stream(seed=4)
    ka, kb, kc = _draws(a, 20), _draws(b, 20), _draws(c, 20)
    assert ka == kb
    assert [(k.source, k.index) for k in ka] != [(k.source, k.index) for k in kc]


def test_no_clip_repeats_within_a_pass_over_a_source():
    keys = _draws(_stream({"ue5": 1}, global_batch=6), 10)  # 60 draws = two passes over 30 clips
    first, second = [k.index for k in keys[:30]], [k.index for k in keys[30:]]
    assert sorted(first) == sorted(second) == list(range(30))
    assert first != second  # each pass is reshuffled


def test_state_restore_continues_the_same_stream():
    ref = _stream(seed=11)
    _draws(ref, 7)
    ref.set_mixture({"ue5": 2, "multiview": 1}, 0.5)
    _draws(ref, 3)
    state = ref.state_at()
    expected = _draws(ref, 12)

    resumed = _stream(seed=0, cross_view=0.9)  # another seed and law: the state must override them
    resumed.load_state(state)
    assert _draws(resumed, 12) == expected


def test_state_at_a_consumed_batch_replays_in_flight_batches():
    """A checkpoint taken while the loader runs ahead must replay the prefetched batches, with the law
    each of them was drawn under (including a change made while they were in flight)."""

    ref = _stream(seed=5)
    _draws(ref, 4)  # the model consumed 2 of these; 2 are in flight
    ref.set_mixture({"internet": 1}, 0.0)  # applies from batch 4
    _draws(ref, 2)
    state = ref.state_at(consumed=2)
    assert state["position"] == 2
    tail_ref = [ref.draw() for _ in range(3)]

    again = _stream(seed=5)
    full = [again.draw() for _ in range(4)]
    again.set_mixture({"internet": 1}, 0.0)
    full += [again.draw() for _ in range(5)]

    resumed = _stream(seed=99)
    resumed.load_state(state)
    replay = [resumed.draw() for _ in range(7)]
    assert replay == full[2:]
    assert replay[4:] == tail_ref
    assert {k.source for k in replay[2]} == {"internet"}


def test_ranks_get_disjoint_slots_of_the_same_global_batch():
    samplers = []
    for rank in range(2):
        stream = _stream({"internet": 1}, seed=1, global_batch=8)
        samplers.append(MixtureSampler(stream, batch_size=4, batches_per_epoch=5, rank=rank, world_size=2))
    k0, k1 = list(samplers[0]), list(samplers[1])
    assert len(k0) == len(k1) == 20 == len(samplers[0])
    # 40 draws = one pass over the 40 internet clips, split between the ranks without overlap
    assert not {k.index for k in k0} & {k.index for k in k1}
    assert {k.index for k in k0} | {k.index for k in k1} == set(range(40))
    assert {k.slot for k in k0} == {0, 1, 2, 3} and {k.slot for k in k1} == {4, 5, 6, 7}


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown sources"):
        _stream({"youtube": 1})
    with pytest.raises(ValueError, match="> 0"):
        _stream({"internet": 0})
    with pytest.raises(ValueError, match="cross_view"):
        _stream(cross_view=1.5)
    stream = MixtureStream({"internet": 1})
    with pytest.raises(RuntimeError, match="bind"):
        stream.draw()
    stream.bind({"ue5": 3}, 4)
    with pytest.raises(RuntimeError, match="no usable clips"):
        stream.draw()
