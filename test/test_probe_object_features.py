"""benchmarks/probe_object_features.py: the spread column that says how visible a feature part is."""

from __future__ import annotations

import numpy as np

from _bench_support import load_benchmark_script


def test_spread_is_the_root_of_the_summed_variances() -> None:
    spread = load_benchmark_script("probe_object_features").spread
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([0.01, 0.02, 1.0, 0.0, 3.0]) + 7.0
    # independent: RMS distance from the mean = sqrt(trace of the (biased) covariance)
    expected = float(np.sqrt(np.trace(np.cov(x, rowvar=False, bias=True))))
    assert abs(spread(x) - expected) < 1e-9
    assert spread(np.tile(x[:1], (10, 1))) < 1e-12  # a constant part does not vary at all
    # a shift does not change it, a scale scales it
    assert abs(spread(x + 100.0) - spread(x)) < 1e-9 and abs(spread(3.0 * x) - 3.0 * spread(x)) < 1e-9
