"""The benchmark statistics (occam.bench.stats) against values worked out by hand / from reference tables."""
import math

import pytest

from occam.bench import stats


def test_wilson_interval_matches_reference_values():
    lo, hi = stats.wilson(81, 263)                       # the textbook example: 0.2553 - 0.3662
    assert lo == pytest.approx(0.255289, abs=1e-6) and hi == pytest.approx(0.366210, abs=1e-6)
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)   # 1 / (1 + z^2 / n) upper bound
    assert stats.wilson(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        stats.wilson(11, 10)


def test_exact_mcnemar_is_a_two_sided_binomial_on_discordant_pairs():
    # 2 vs 10 discordant: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096
    assert stats.mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    assert stats.mcnemar_exact(10, 2) == stats.mcnemar_exact(2, 10)
    assert stats.mcnemar_exact(0, 7) == pytest.approx(2 / 2 ** 7)
    assert stats.mcnemar_exact(5, 5) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0


def test_discordant_counts_pairs_and_rejects_unpaired_lists():
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    assert stats.discordant(a, b) == (2, 1)
    with pytest.raises(ValueError, match="same questions"):
        stats.discordant(a, b[:3])


def test_holm_step_down_in_input_order():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_verdict_only_where_the_corrected_test_supports_it():
    assert stats.verdict(20, 3, 0.001) == "win"
    assert stats.verdict(3, 20, 0.001) == "loss"
    assert stats.verdict(20, 3, 0.2) == "tie"
    assert stats.verdict(4, 4, 0.0) == "tie"
    assert math.isclose(stats.Z95, 1.959964, abs_tol=1e-6)
