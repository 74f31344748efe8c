"""The algorithm's equations, checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from swarmq.swarm import (
    Best,
    Factors,
    SwarmParams,
    UpdateRecord,
    apply_update,
    best_initial_expert,
    draw_factors,
    expand_population,
    improves_personal_best,
    initial_velocity,
    needs_restart,
    select_best,
    select_worst,
    should_stop,
    skipped_evaluations,
    step_length_at,
    update_coefficients,
)

f32 = np.float32


def vec(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float32)


X, V, P, G, W = vec(1, 2), vec(0.5, -1), vec(2, 2), vec(3, 0), vec(0, 4)


def test_velocity_and_position_update_by_hand() -> None:
    # a, b, c, d = 0.4, 0.3, 0.3, 0.3 (all r = 1), C = 1.3:
    # 0.4 v = (0.2, -0.4); 0.3 (p - x) = (0.3, 0); 0.3 (g - x) = (0.6, -0.6);
    # 0.3 (x - gw) = (0.3, -0.6)
    # sum = (1.4, -1.6); v' = sum / 1.3; x' = x + 1.0 v'
    params = SwarmParams(random_weights=False)
    coeffs = update_coefficients(draw_factors(0, 1, 0, params.random_weights), params)
    assert coeffs == pytest.approx((0.4 / 1.3, 0.3 / 1.3, 0.3 / 1.3, 0.3 / 1.3))
    new_x, new_v = apply_update(X, V, P, G, W, coeffs, 1.0)
    np.testing.assert_allclose(new_v, [1.4 / 1.3, -1.6 / 1.3], rtol=1e-6)
    np.testing.assert_allclose(new_x, [1 + 1.4 / 1.3, 2 - 1.6 / 1.3], rtol=1e-6)
    assert new_x.dtype == np.float32 and new_v.dtype == np.float32


def test_step_length_scales_the_move() -> None:
    params = SwarmParams(random_weights=False)
    coeffs = update_coefficients(Factors(1, 1, 1, 1), params)
    new_x, new_v = apply_update(X, V, P, G, W, coeffs, 0.5)
    np.testing.assert_allclose(new_x, X + 0.5 * new_v, rtol=1e-6)
    np.testing.assert_allclose(new_x, [1 + 0.7 / 1.3, 2 - 0.8 / 1.3], rtol=1e-6)


def test_update_without_repel_term() -> None:
    # d = 0, C = 1.0: v' = (0.2 + 0.3 + 0.6, -0.4 + 0 - 0.6) = (1.1, -1.0)
    params = SwarmParams(random_weights=False, repel_term=False)
    coeffs = update_coefficients(Factors(1, 1, 1, 1), params)
    assert coeffs[3] == 0.0
    _, new_v = apply_update(X, V, P, G, W, coeffs, 1.0)
    np.testing.assert_allclose(new_v, [1.1, -1.0], rtol=1e-6)


def test_random_factors_weight_each_term() -> None:
    # r = (0.5, 1, 0.25, 0): a = 0.2, b = 0.3, c = 0.075, d = 0, C = 0.575
    coeffs = update_coefficients(Factors(0.5, 1.0, 0.25, 0.0), SwarmParams())
    assert coeffs == pytest.approx((0.2 / 0.575, 0.3 / 0.575, 0.075 / 0.575, 0.0))
    _, new_v = apply_update(X, V, P, G, W, coeffs, 1.0)
    # 0.2 v = (0.1, -0.2); 0.3 (p - x) = (0.3, 0); 0.075 (g - x) = (0.15, -0.15)
    np.testing.assert_allclose(new_v, [0.55 / 0.575, -0.35 / 0.575], rtol=1e-6)


def test_factors_are_reproducible_and_keyed() -> None:
    a = draw_factors(7, 3, 2, True)
    assert a == draw_factors(7, 3, 2, True)
    assert a != draw_factors(7, 3, 1, True)
    assert a != draw_factors(7, 4, 2, True)
    assert a != draw_factors(8, 3, 2, True)
    assert all(0.0 <= r < 1.0 for r in (a.r_v, a.r_p, a.r_g, a.r_w))
    assert draw_factors(7, 3, 2, False) == Factors(1.0, 1.0, 1.0, 1.0)


def test_zero_coefficients_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 0"):
        update_coefficients(Factors(0, 0, 0, 0), SwarmParams())


def test_crossover_expansion_by_hand() -> None:
    experts = [vec(0, 0), vec(1, 2), vec(-1, 4)]
    positions, lineage = expand_population(experts, 12, seed=3)
    assert len(positions) == 12 and lineage[:3] == [None, None, None]
    for k in range(3, 12):
        parent = lineage[k]
        assert parent is not None and parent.first != parent.second
        assert max(parent.first, parent.second) < k  # parents existed before the child
        assert 0.0 <= parent.weight < 2.0
        w = parent.weight
        expected = f32(w) * positions[parent.first] + f32(1 - w) * positions[parent.second]
        np.testing.assert_array_equal(positions[k], expected)
    # Children can be parents: with 9 draws from a growing list, some parent index is >= 3.
    assert any(p is not None and max(p.first, p.second) >= 3 for p in lineage)
    again, _ = expand_population(experts, 12, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(positions, again, strict=True))


def test_expansion_refuses_fewer_particles_than_experts() -> None:
    with pytest.raises(ValueError, match="below the number of experts"):
        expand_population([vec(0), vec(1), vec(2)], 2, seed=0)


def test_starting_velocities() -> None:
    xs = [vec(0, 0), vec(1, 2), vec(-1, 4)]
    np.testing.assert_array_equal(initial_velocity("zero", xs, 1, 0), vec(0, 0))
    for i in range(3):
        v = initial_velocity("random", xs, i, seed=5)
        # v = x_j - x_i for some j != i
        assert any(np.array_equal(v, xs[j] - xs[i]) for j in range(3) if j != i)
        assert not np.array_equal(v, vec(0, 0))
    np.testing.assert_array_equal(
        initial_velocity("best", xs, 0, 0, global_best=vec(3, 3)), vec(3, 3)
    )
    with pytest.raises(ValueError, match="global best"):
        initial_velocity("best", xs, 0, 0)
    with pytest.raises(ValueError, match="unknown"):
        initial_velocity("sideways", xs, 0, 0)


def test_random_velocity_picks_every_other_particle() -> None:
    xs = [vec(float(i)) for i in range(4)]
    seen = {float(initial_velocity("random", xs, 0, seed)[0]) for seed in range(200)}
    assert seen == {1.0, 2.0, 3.0}


def test_step_length_decay_with_minimum() -> None:
    params = SwarmParams(step_length=1.0, step_length_factor=0.95, min_step_length=0.1)
    assert step_length_at(1, params) == 1.0
    assert step_length_at(2, params) == pytest.approx(0.95)
    assert step_length_at(3, params) == pytest.approx(0.9025)
    fast = SwarmParams(step_length=0.5, step_length_factor=0.5, min_step_length=0.1)
    assert [step_length_at(t, fast) for t in range(1, 6)] == pytest.approx(
        [0.5, 0.25, 0.125, 0.1, 0.1]
    )
    with pytest.raises(ValueError):
        step_length_at(0, params)


def test_patience_stop_and_max_iterations() -> None:
    params = SwarmParams(patience=3, max_iterations=50)
    assert should_stop([0.5, 0.5, 0.5], 3, params) is None  # not longer than patience
    assert "patience" in (should_stop([0.5, 0.5, 0.5, 0.5], 4, params) or "")
    assert "patience" in (should_stop([0.1, 0.2, 0.6, 0.6, 0.6], 5, params) or "")
    assert should_stop([0.1, 0.2, 0.5, 0.6, 0.6], 5, params) is None
    assert "max_iterations" in (should_stop([0.1, 0.2], 51, params) or "")
    assert should_stop([0.1, 0.2], 50, params) is None


def test_restart_after_restart_patience_times_patience() -> None:
    # The reference rule: before the update producing t, restart when t - k >= rp * patience.
    params = SwarmParams(patience=10, restart_patience=0.5)  # threshold 5
    assert not needs_restart(4, best_iteration=0, params=params)  # 4 < 5
    assert needs_restart(5, best_iteration=0, params=params)  # the boundary: 5 >= 5
    assert needs_restart(6, best_iteration=0, params=params)
    assert not needs_restart(7, best_iteration=3, params=params)
    assert needs_restart(8, best_iteration=3, params=params)
    # A fractional threshold (0.67 * 10 = 6.7, the authors' launch scripts) rounds up: 7.
    scripts = SwarmParams(patience=10, restart_patience=0.67)
    assert not needs_restart(6, best_iteration=0, params=scripts)
    assert needs_restart(7, best_iteration=0, params=scripts)
    # A threshold of at most 1 restarts a particle right after iteration 0 if it never improved.
    assert needs_restart(1, best_iteration=0, params=SwarmParams(patience=2, restart_patience=0.5))
    assert not needs_restart(100, best_iteration=0, params=SwarmParams(restart=False))


def reference_restarts(history: list[float], params: SwarmParams) -> bool:
    """The reference code's test, on a particle's utility history before an update:
    len(history) - (first index of its maximum) >= restart_patience * patience."""
    return len(history) - history.index(max(history)) >= params.restart_patience * params.patience


@pytest.mark.parametrize(("patience", "fraction"), [(10, 0.5), (6, 0.5), (4, 0.4), (10, 0.67)])
def test_restart_matches_the_reference_rule_on_random_histories(
    patience: int, fraction: float
) -> None:
    params = SwarmParams(patience=patience, restart_patience=fraction)
    rng = np.random.default_rng(1)
    for _ in range(300):
        # Few distinct values, so that a best is often reached again (k is its first time).
        history = [float(u) for u in rng.integers(0, 4, size=int(rng.integers(1, 20)))]
        t = len(history)  # iterations 0..t-1 evaluated: the next update produces t
        k = history.index(max(history))
        assert needs_restart(t, k, params) == reference_restarts(history, params), (history, t)


def test_global_best_is_the_first_new_strict_maximum() -> None:
    assert select_best(None, [0.5, 0.7, 0.7], 0) == Best(1, 0, 0.7)
    current = Best(1, 0, 0.7)
    assert select_best(current, [0.7, 0.6], 1) == current  # a tie does not replace
    assert select_best(current, [0.6, 0.8, 0.9, 0.9], 2) == Best(2, 2, 0.9)
    assert select_best(current, [None, 0.9], 3) == Best(1, 3, 0.9)  # skipped takes no part


def test_global_worst_is_the_first_new_strict_minimum() -> None:
    assert select_worst(None, [0.5, 0.2, 0.2], 0) == Best(1, 0, 0.2)
    current = Best(1, 0, 0.2)
    assert select_worst(current, [0.2, 0.3], 1) == current
    assert select_worst(current, [0.3, 0.1, 0.1], 2) == Best(1, 2, 0.1)


def test_dropout() -> None:
    none = SwarmParams()
    assert skipped_evaluations(0, 5, 4, none) == [False] * 4
    always_k = SwarmParams(dropout_k=0.999)
    assert skipped_evaluations(0, 0, 4, always_k) == [False] * 4  # never the initial evaluation
    assert skipped_evaluations(0, 1, 4, always_k) == [True] * 4
    half_n = SwarmParams(dropout_n=0.5)
    draws = [s for t in range(1, 201) for s in skipped_evaluations(1, t, 5, half_n)]
    assert 0.4 < sum(draws) / len(draws) < 0.6
    assert skipped_evaluations(1, 7, 5, half_n) == skipped_evaluations(1, 7, 5, half_n)


def test_personal_best_moves_only_on_strict_improvement() -> None:
    assert improves_personal_best(0.5, 0.6)
    assert not improves_personal_best(0.5, 0.5)  # a tie keeps the older position and its age
    assert not improves_personal_best(0.5, 0.4)
    assert not improves_personal_best(0.5, None)  # skipped evaluation
    assert not improves_personal_best(None, 0.9)  # no personal best to compare with yet


def test_best_initial_expert_first_among_equals_and_ignores_missing() -> None:
    assert best_initial_expert([0.2, 0.7, 0.7, 0.1]) == 1
    assert best_initial_expert([None, 0.3, float("nan"), 0.2]) == 1
    assert best_initial_expert([float("nan"), 0.1]) == 1  # numpy's argmax would pick the NaN
    assert best_initial_expert([-1.0, -2.0]) == 0
    assert best_initial_expert([None, float("nan")]) is None
    assert best_initial_expert([]) is None


def test_update_record_round_trips_through_json() -> None:
    import json

    record = UpdateRecord(
        factors=(0.1, 0.2, 0.3, 0.4),
        coefficients=(0.5, 0.25, 0.125, 0.0625),
        step_length=0.9,
        restarted=True,
        x="aa",
        v=None,
        p="aa",
        g="bb",
        g_worst="cc",
    )
    stored = json.loads(json.dumps(record.to_json()))
    assert set(stored) == set(UpdateRecord.FIELDS)  # no application key outside async mode
    assert UpdateRecord.from_json(stored) == record
    moved = UpdateRecord(**{**vars(record), "application": 7})
    assert UpdateRecord.from_json(moved.to_json()).application == 7
    with pytest.raises(ValueError, match="needs factors, coefficients"):
        UpdateRecord.from_json({"factors": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="coefficients must be four numbers"):
        UpdateRecord.from_json({**stored, "coefficients": [1, 2]})
