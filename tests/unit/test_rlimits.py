"""The descriptor watch's hysteresis, the soft-limit raise (in this process: it only ever raises) and the
descriptor budget of a configuration (what must fit in the limit before any client connects)."""

from __future__ import annotations

import os
import resource

from serialmuxd.config import Config, parse_config
from serialmuxd.rlimits import (
    BASE_DESCRIPTORS,
    DescriptorWatch,
    descriptor_budget,
    open_descriptors,
    raise_nofile_limit,
)


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
    # The same number as a listing (minus the descriptor the listing itself holds), and it follows opens.
    assert count == len(os.listdir("/proc/self/fd")) - 1
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        assert open_descriptors(1 << 20) == count + 1
    finally:
        os.close(fd)


def _config(ports: str, top: str = "") -> Config:
    return parse_config(top + ports, "<test>")


def _port(i: int, device: str, extra: str = "") -> str:
    return f'[[ports]]\nname = "p{i}"\ndevice = "{device}"\ntelnet = "127.0.0.1:{7000 + i}"\n{extra}\n'


def test_budget_counts_listeners_and_devices_per_port() -> None:
    ports = _port(0, "unix:/run/vm0.sock", 'telnet_readonly = "127.0.0.1:8000"') + _port(1, "exec:/bin/sh")
    budget = descriptor_budget(_config(ports, '[http]\nlisten = "127.0.0.1:8480"\n'))
    # http + (telnet, telnet_readonly) + telnet; unix socket 1, exec 2 (PTY master and pidfd)
    assert (budget.listeners, budget.devices) == (4, 3)
    assert budget.fixed == BASE_DESCRIPTORS + 7


def test_a_config_that_cannot_fit_is_refused_with_the_numbers() -> None:
    config = _config("".join(_port(i, f"unix:/run/vm{i}.sock") for i in range(100)))
    budget = descriptor_budget(config)
    assert budget.fixed == BASE_DESCRIPTORS + 200
    assert budget.refusal(BASE_DESCRIPTORS + 200) is None
    reason = budget.refusal(BASE_DESCRIPTORS + 199)
    assert reason is not None
    assert f"at least {BASE_DESCRIPTORS + 200} open files" in reason and "100 listeners" in reason
    assert f"limit is {BASE_DESCRIPTORS + 199}" in reason and "LimitNOFILE" in reason
    assert budget.clients_left(BASE_DESCRIPTORS + 264) == 64
