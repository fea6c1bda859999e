"""The descriptor watch's hysteresis, and the soft-limit raise (in this process: it only ever raises)."""

from __future__ import annotations

import resource

from serialmuxd.rlimits import DescriptorWatch, open_descriptors, raise_nofile_limit


def test_low_once_when_crossing_90_percent_and_recovered_below_80() -> None:
    watch = DescriptorWatch()
    assert [watch.check(n, 100) for n in (10, 89, 90, 95, 99, 85, 80)] == [None, None, "low"] + [None] * 4
    assert watch.check(79, 100) == "recovered"
    assert watch.check(50, 100) is None
    assert watch.check(91, 100) == "low"


def test_raise_keeps_the_hard_limit_and_reaches_it() -> None:
    _, hard_before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = raise_nofile_limit()
    assert hard == hard_before and (soft == hard or hard == resource.RLIM_INFINITY)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


def test_open_descriptors_counts_this_process() -> None:
    count = open_descriptors(1 << 20)
    assert count is not None and count >= 3
