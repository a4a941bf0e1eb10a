"""The benchmark's throughput rounds: one figure per peer, and the ratio of each round's pair."""

from __future__ import annotations

import pytest

from bench.bench_engine import combine_rounds, parse_args, round_ratios


def test_a_peer_s_rounds_give_their_median_and_keep_every_round() -> None:
    ours = combine_rounds([
        {"throughput_wps": 1000.0, "write_xacts_per_workflow": 1.4, "wal_bytes_per_workflow": 4000.0},
        {"throughput_wps": 1300.0, "write_xacts_per_workflow": 1.6, "wal_bytes_per_workflow": 5000.0},
        {"throughput_wps": 1100.0, "write_xacts_per_workflow": 1.5, "wal_bytes_per_workflow": 4500.0},
    ])
    assert ours["throughput_wps"] == 1100.0
    assert ours["throughput_wps_rounds"] == [1000.0, 1300.0, 1100.0]
    assert ours["write_xacts_per_workflow"] == pytest.approx(1.5)
    assert ours["wal_bytes_per_workflow"] == pytest.approx(4500.0)
    # DBOS's rounds carry no counts of ours; none are made up for it.
    assert combine_rounds([{"throughput_wps": 200.0}]) == {"throughput_wps": 200.0,
                                                           "throughput_wps_rounds": [200.0]}


def test_each_round_is_compared_with_the_dbos_round_run_right_after_it() -> None:
    ours = combine_rounds([{"throughput_wps": w} for w in (1000.0, 1200.0, 900.0)])
    dbos = combine_rounds([{"throughput_wps": w} for w in (200.0, 200.0, 150.0)])
    assert round_ratios(ours, dbos) == [5.0, 6.0, 6.0]
    assert round_ratios(ours, None) == []
    with pytest.raises(ValueError):  # a round without its pair is a bug, not a shorter list
        round_ratios(ours, combine_rounds([{"throughput_wps": 200.0}]))


def test_rounds_must_be_at_least_one() -> None:
    assert parse_args([]).rounds == 5
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
