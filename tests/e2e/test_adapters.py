"""The command and ipmi adapters with real child programs, and the ``[ports.hypervisor]`` config seam.

The command adapter runs real tiny programs (``/bin/echo``, ``/bin/sh``, this Python) so that "no shell",
``{port}`` substitution and "a timeout kills the whole job" are checked on real processes.  The ipmi
adapter runs a fake ``ipmitool`` placed first on PATH that records its argv and environment: the password
must reach it through a file or the environment, never through argv.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from serialmuxd.adapters import (
    Action,
    AdapterError,
    AdapterErrorKind,
    CommandAdapter,
    CommandConfig,
    HypervisorConfig,
    IpmiAdapter,
    IpmiConfig,
    LibvirtAdapter,
    LibvirtConfig,
    QmpAdapter,
    QmpConfig,
    VmState,
    make_adapter,
    parse_hypervisor,
)
from serialmuxd.guest import KERNEL_START, LOGIN_PROMPT, POWER_BUTTON, POWER_DOWN, GuestVM

from .guest_support import BOOT_TIMEOUT_S, SerialConsole
from .support import FdReader

RECORD_ARGV = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"


def command_adapter(port: str = "vm1", timeout_s: float = 5.0, **argvs: list[str]) -> CommandAdapter:
    config = CommandConfig(timeout_s=timeout_s, **{name: tuple(argv) for name, argv in argvs.items()})
    return CommandAdapter(config, port)


def process_gone(pid: int) -> bool:
    """Exited (or a zombie waiting for a reaper that is not us)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in ("Z", "X")


async def wait_gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether ``pid`` exits within ``within_s``.  A pidfd becomes readable when its process exits, also for
    a process that is not our child (the killed grandchild is reaped by init, not by us)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # exited and reaped already
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        async with asyncio.timeout(within_s):
            await exited
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return True


@contextlib.contextmanager
def pid_fifo(path: Path) -> Iterator[FdReader]:
    """A FIFO at ``path`` that a child writes its pid into (``echo $$ > path``), read on the loop: the pid
    arrives as bytes, no polling for a file to appear.  Opened for reading first, so the child's open for
    writing does not block."""
    os.mkfifo(path)
    reader = FdReader(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    try:
        yield reader
    finally:
        reader.stop()
        os.close(reader.fd)


async def read_pid(reader: FdReader) -> int:
    return int((await reader.expect(re.compile(rb"(\d+)\n"))).group(1))


# ----------------------------------------------------------------------------------------------------
# command adapter


@pytest.mark.asyncio
async def test_command_success_and_actions() -> None:
    adapter = command_adapter(nmi=["/bin/echo", "nmi sent"], reset=["/bin/true"])
    assert adapter.actions == {Action.NMI, Action.RESET}
    await adapter.nmi()
    await adapter.reset()
    with pytest.raises(AdapterError) as caught:
        await adapter.restart()
    assert caught.value.kind is AdapterErrorKind.UNSUPPORTED
    assert str(caught.value) == "command hypervisor of port vm1: restart is not available with this adapter"


@pytest.mark.asyncio
async def test_port_placeholder_and_no_shell(tmp_path: Path) -> None:
    record = tmp_path / "argv.json"
    marker = tmp_path / "pwned"
    hostile = [
        f"x; touch {marker}",
        "$(touch " + str(marker) + ")",
        "`id`",
        "a b",
        "{port}-suffix",
        "{other}",
    ]
    adapter = command_adapter(
        port="vm;1", nmi=[sys.executable, "-c", RECORD_ARGV, str(record), "{port}", *hostile]
    )
    await adapter.nmi()
    recorded = json.loads(record.read_text())
    assert recorded == [str(record), "vm;1", *hostile[:4], "vm;1-suffix", "{other}"]
    assert not marker.exists()  # nothing was interpreted by a shell


@pytest.mark.asyncio
async def test_nonzero_exit_is_refused_with_the_programs_words() -> None:
    adapter = command_adapter(
        reset=["/bin/sh", "-c", "echo 'first line'; echo 'no such domain: vm1' >&2; exit 3"]
    )
    with pytest.raises(AdapterError) as caught:
        await adapter.reset()
    assert caught.value.kind is AdapterErrorKind.REFUSED
    assert str(caught.value) == "command hypervisor of port vm1: reset: exit status 3: no such domain: vm1"


@pytest.mark.asyncio
async def test_missing_program_is_a_clear_error() -> None:
    adapter = command_adapter(nmi=["/nonexistent/vmctl", "nmi"])
    with pytest.raises(AdapterError, match="program not found: /nonexistent/vmctl"):
        await adapter.nmi()


@pytest.mark.asyncio
async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # sh starts sleep in the background (it inherits our pipes) and waits: killing sh alone is not enough.
    adapter = command_adapter(
        timeout_s=0.5,
        nmi=["/bin/sh", "-c", 'sleep 60 & echo $! > "$1"; wait', "{port}", str(tmp_path / "pid")],
    )
    loop = asyncio.get_running_loop()
    with pid_fifo(tmp_path / "pid") as pid_reader:
        started = loop.time()
        with pytest.raises(AdapterError) as caught:
            await adapter.nmi()
        elapsed = loop.time() - started
        sleep_pid = await read_pid(pid_reader)
    # Not before the timeout; and long before the background sleep would have ended by itself (a generous
    # bound any loaded machine meets: the error text says which timeout fired).
    assert 0.5 <= elapsed < 30
    assert caught.value.kind is AdapterErrorKind.TIMEOUT
    assert (
        str(caught.value)
        == "command hypervisor of port vm1: nmi: /bin/sh did not finish within 0.5 s (killed)"
    )
    assert await wait_gone(sleep_pid)


@pytest.mark.asyncio
async def test_cancelled_caller_kills_the_child(tmp_path: Path) -> None:
    adapter = command_adapter(
        reset=["/bin/sh", "-c", 'echo $$ > "$1"; exec sleep 60', "sh", str(tmp_path / "pid")]
    )
    with pid_fifo(tmp_path / "pid") as pid_reader:
        task = asyncio.get_running_loop().create_task(adapter.reset())
        sh_pid = await read_pid(pid_reader)  # the child runs: now cancel its caller
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert process_gone(sh_pid)  # killed and reaped before the cancellation returned


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("output", "state", "reason"),
    [
        ("running", VmState.RUNNING, "running"),
        ("running since 10:00", VmState.RUNNING, "since 10:00"),
        ("paused by operator", VmState.PAUSED, "by operator"),
        ("shut off", VmState.STOPPED, "off"),
        ("stopped", VmState.STOPPED, "stopped"),
        ("crashed", VmState.CRASHED, "crashed"),
        ("Shutdown", VmState.SHUTDOWN, "Shutdown"),
        ("banana", VmState.UNKNOWN, "state command printed 'banana'"),
    ],
)
async def test_state_parses_the_first_word(output: str, state: VmState, reason: str) -> None:
    adapter = command_adapter(state=["/bin/echo", output])
    report = await adapter.state_report()
    assert (report.state, report.reason) == (state, reason)


@pytest.mark.asyncio
async def test_state_failures_are_unknown_not_exceptions() -> None:
    failing = command_adapter(state=["/bin/sh", "-c", "echo 'cannot reach vmd' >&2; exit 1"])
    report = await failing.state_report()
    assert report.state is VmState.UNKNOWN
    assert report.reason == "state: exit status 1: cannot reach vmd"

    slow = command_adapter(timeout_s=0.3, state=["/bin/sleep", "10"])
    report = await slow.state_report()
    assert report.state is VmState.UNKNOWN
    assert "did not finish within 0.3 s" in report.reason

    none = command_adapter(nmi=["/bin/true"])
    assert (await none.state_report()).reason == "no state command configured"


@pytest.mark.asyncio
async def test_state_changes_reach_listeners(tmp_path: Path) -> None:
    state_file = tmp_path / "state"
    state_file.write_text("running\n")
    adapter = command_adapter(state=["/bin/cat", str(state_file)])
    seen: list[VmState] = []
    unsubscribe = adapter.on_state_change(lambda report: seen.append(report.state))
    await adapter.state()
    await adapter.state()  # unchanged: no second report
    state_file.write_text("stopped\n")
    await adapter.state()
    unsubscribe()
    state_file.write_text("paused\n")
    await adapter.state()
    assert seen == [VmState.RUNNING, VmState.STOPPED]
    assert adapter.current.state is VmState.PAUSED


# ----------------------------------------------------------------------------------------------------
# ipmi adapter with a fake ipmitool

FAKE_IPMITOOL = """#!/bin/sh
# Records how it was called, then answers like ipmitool.
printf '%s\\n' "$@" > "{record}.argv"
env > "{record}.env"
for last; do :; done
case "$last" in
    status) echo "Chassis Power is {power}" ;;
    diag) echo "Chassis Power Control: Diag" ;;
    reset) echo "Chassis Power Control: Reset" ;;
    soft) echo "Chassis Power Control: Soft" ;;
    on) echo "Unable to set Chassis Power Control to Up/On" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def fake_ipmitool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "call"
    script = bin_dir / "ipmitool"
    script.write_text(FAKE_IPMITOOL.format(record=record, power="on"))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return record


SECRET = "s3cr3t-Pa55"


def recorded(record: Path) -> tuple[list[str], dict[str, str]]:
    argv = Path(f"{record}.argv").read_text().splitlines()
    env = dict(line.split("=", 1) for line in Path(f"{record}.env").read_text().splitlines() if "=" in line)
    return argv, env


@pytest.mark.asyncio
async def test_ipmi_password_file_is_passed_as_a_file(fake_ipmitool: Path, tmp_path: Path) -> None:
    password_file = tmp_path / "bmc.pass"
    password_file.write_text(SECRET)
    adapter = IpmiAdapter(IpmiConfig(host="bmc1.example", username="admin", password_file=str(password_file)))
    await adapter.nmi()
    argv, env = recorded(fake_ipmitool)
    assert argv == [
        "-I", "lanplus", "-H", "bmc1.example", "-p", "623", "-U", "admin",
        "-f", str(password_file), "chassis", "power", "diag",
    ]  # fmt: skip
    assert SECRET not in " ".join(argv)
    assert "IPMI_PASSWORD" not in env


@pytest.mark.asyncio
async def test_ipmi_password_env_is_passed_in_the_environment(
    fake_ipmitool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BMC1_PASSWORD", SECRET)
    config = IpmiConfig(
        host="10.0.0.5", username="admin", password_env="BMC1_PASSWORD", port=6230, cipher_suite=3
    )
    adapter = IpmiAdapter(config)
    for action, verb in ((adapter.reset, "reset"), (adapter.restart, "soft"), (adapter.nmi, "diag")):
        await action()
        argv, env = recorded(fake_ipmitool)
        assert argv[-3:] == ["chassis", "power", verb]
        assert "-E" in argv
        assert argv[argv.index("-C") : argv.index("-C") + 2] == ["-C", "3"]
        assert all(SECRET not in arg for arg in argv)
        assert env["IPMI_PASSWORD"] == SECRET


@pytest.mark.asyncio
async def test_ipmi_state_and_failures(fake_ipmitool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BMC1_PASSWORD", SECRET)
    adapter = IpmiAdapter(IpmiConfig(host="bmc1", password_env="BMC1_PASSWORD"))
    report = await adapter.state_report()
    assert report.state is VmState.RUNNING
    assert report.reason == "chassis power is on (BMC bmc1)"
    with pytest.raises(AdapterError) as caught:
        await adapter.start()
    assert caught.value.kind is AdapterErrorKind.REFUSED
    assert "Unable to set Chassis Power Control to Up/On" in str(caught.value)

    monkeypatch.delenv("BMC1_PASSWORD")
    with pytest.raises(AdapterError, match=r"BMC1_PASSWORD .* is not set"):
        await adapter.nmi()
    assert (await adapter.state_report()).state is VmState.UNKNOWN


@pytest.mark.asyncio
async def test_ipmi_missing_tool_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    adapter = IpmiAdapter(IpmiConfig(host="bmc1", password_file="/etc/bmc.pass"))
    with pytest.raises(AdapterError, match="program not found: ipmitool"):
        await adapter.reset()


# ----------------------------------------------------------------------------------------------------
# config seam

KEY = "ports[0].hypervisor"


def test_parse_qmp() -> None:
    config, problems = parse_hypervisor({"type": "qmp", "socket": "/run/vm1/qmp.sock", "timeout_s": 2}, KEY)
    assert problems == []
    assert config == QmpConfig(timeout_s=2.0, socket="/run/vm1/qmp.sock")
    adapter = make_adapter(config, "vm1")
    assert isinstance(adapter, QmpAdapter)
    assert adapter.description == "qmp /run/vm1/qmp.sock"
    assert adapter.timeout_s == 2.0


def test_parse_command_and_make_adapter() -> None:
    table = {
        "type": "command",
        "nmi": ["virsh", "inject-nmi", "{port}"],
        "state": ["virsh", "domstate", "{port}"],
    }
    config, problems = parse_hypervisor(table, KEY)
    assert problems == []
    assert isinstance(config, CommandConfig)
    adapter = make_adapter(config, "vm7")
    assert isinstance(adapter, CommandAdapter)
    assert adapter.argv(Action.NMI) == ["virsh", "inject-nmi", "vm7"]
    assert adapter.actions == {Action.NMI, Action.STATE}


def test_parse_ipmi_and_libvirt() -> None:
    config, problems = parse_hypervisor(
        {"type": "ipmi", "host": "bmc1", "username": "admin", "password_file": "/etc/serialmuxd/bmc1.pass"},
        KEY,
    )
    assert problems == []
    assert isinstance(make_adapter(config, "n1") if config else None, IpmiAdapter)
    config, problems = parse_hypervisor({"type": "libvirt", "domain": "vm1"}, KEY)
    assert problems == []
    assert config == LibvirtConfig(uri="qemu:///system", domain="vm1")
    assert isinstance(make_adapter(config, "vm1"), LibvirtAdapter)


@pytest.mark.parametrize(
    ("table", "problems"),
    [
        ("qmp", [(KEY, "expected a table, got string 'qmp'")]),
        ({}, [(f"{KEY}.type", "required key is missing")]),
        ({"type": "xen"}, [(f"{KEY}.type", "must be one of 'qmp', 'command', 'ipmi', 'libvirt', got 'xen'")]),
        ({"type": "qmp"}, [(f"{KEY}.socket", "required key is missing")]),
        (
            {"type": "qmp", "socket": "qmp.sock"},
            [(f"{KEY}.socket", "must be an absolute path, got 'qmp.sock'")],
        ),
        (
            {"type": "qmp", "socket": "/" + "x" * 120},
            [
                (
                    f"{KEY}.socket",
                    "a unix socket path can be at most 107 bytes, this one is 121: '/" + "x" * 55 + "...",
                )
            ],
        ),
        (
            {"type": "qmp", "socket": "/run/q.sock", "sokcet": 1, "timeout_s": "5"},
            [
                (f"{KEY}.sokcet", "unknown key; did you mean 'socket'?"),
                (f"{KEY}.timeout_s", "expected number, got string '5'"),
            ],
        ),
        (
            {"type": "qmp", "socket": "/run/q.sock", "timeout_s": 0},
            [(f"{KEY}.timeout_s", "must be greater than 0 and at most 300, got 0")],
        ),
        (
            {"type": "command", "nmi": "virsh inject-nmi vm1"},
            [
                (
                    f"{KEY}.nmi",
                    "expected an array of strings (argv, run without a shell), "
                    "got string 'virsh inject-nmi vm1'; write it as ['virsh', 'inject-nmi', 'vm1']",
                )
            ],
        ),
        (
            {"type": "command", "reset": ["virsh", 5]},
            [(f"{KEY}.reset[1]", "expected string, got integer 5")],
        ),
        (
            {"type": "command", "reset": []},
            [(f"{KEY}.reset", "must not be empty: the first string is the program to run")],
        ),
        (
            {"type": "command"},
            [(KEY, "a command hypervisor needs at least one of nmi, reset, restart, state, start")],
        ),
        (
            {"type": "ipmi", "host": "bmc1", "password": "hunter2"},
            [
                (
                    f"{KEY}.password",
                    "not supported: keep the password out of the config; use password_file (a file only the "
                    "daemon can read) or password_env (a variable of the daemon's environment)",
                )
            ],
        ),
        (
            {"type": "ipmi", "host": "bmc1"},
            [(KEY, "needs password_file or password_env (never a password in the config or on argv)")],
        ),
        (
            {"type": "ipmi", "host": "bmc1", "password_file": "/p", "password_env": "P"},
            [(f"{KEY}.password_env", "set only one of password_file and password_env")],
        ),
        (
            {"type": "ipmi", "host": "bmc1", "password_env": "1-bad", "interface": "serial", "port": 70000},
            [
                (f"{KEY}.password_env", "must be an environment variable name, got '1-bad'"),
                (f"{KEY}.interface", "must be one of 'lanplus', 'lan', got 'serial'"),
                (f"{KEY}.port", "must be between 1 and 65535, got 70000"),
            ],
        ),
        ({"type": "libvirt"}, [(f"{KEY}.domain", "required key is missing")]),
    ],
)
def test_parse_problems(table: object, problems: list[tuple[str, str]]) -> None:
    config, found = parse_hypervisor(table, KEY)
    assert config is None
    assert found == problems


def test_make_adapter_rejects_unknown_config() -> None:
    with pytest.raises(TypeError):
        make_adapter(HypervisorConfig(), "vm1")


# ----------------------------------------------------------------------------------------------------
# ipmi adapter against OpenIPMI's BMC simulator, with our real QEMU guest behind it

IPMI_SIM_MISSING = shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None
IPMI_SIM_SKIP = "ipmi_sim or ipmitool is not installed (apt-get install openipmi ipmitool)"

LAN_CONF = """name "serialmuxd-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {lan_port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 {vm_port} codec VM
  user 2 true "admin" "{password}" admin 10 none md2 md5 straight
"""
SIM_COMMANDS = (
    "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n"
)


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest_asyncio.fixture
async def ipmi_sim(tmp_path: Path) -> AsyncIterator[tuple[int, int, Path]]:
    """A running ipmi_sim: (LAN UDP port, VM TCP port for QEMU's ipmi-bmc-extern, password file)."""
    if IPMI_SIM_MISSING:
        pytest.skip(IPMI_SIM_SKIP)
    lan_port, vm_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    (tmp_path / "lan.conf").write_text(LAN_CONF.format(lan_port=lan_port, vm_port=vm_port, password=SECRET))
    (tmp_path / "sim.emu").write_text(SIM_COMMANDS)
    (tmp_path / "state").mkdir()
    password_file = tmp_path / "bmc.pass"
    password_file.write_text(SECRET)
    password_file.chmod(0o600)
    pipe = asyncio.subprocess.PIPE
    sim = await asyncio.create_subprocess_exec(
        "ipmi_sim", "-c", "lan.conf", "-f", "sim.emu", "-s", "state",
        cwd=tmp_path, stdin=pipe, stdout=pipe, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert sim.stdin is not None and sim.stdout is not None
    try:
        # Its console prompt comes after the config is loaded and the LAN and VM ports are bound.
        async with asyncio.timeout(10):
            seen = b""
            while not seen.endswith(b"> "):
                chunk = await sim.stdout.read(4096)
                assert chunk, f"ipmi_sim exited: {seen!r}"
                seen += chunk
        yield lan_port, vm_port, password_file
    finally:
        sim.stdin.close()  # EOF on its console: ipmi_sim exits
        try:
            async with asyncio.timeout(5):
                await sim.wait()
        except TimeoutError:
            sim.kill()
            await sim.wait()


@pytest.mark.asyncio
async def test_ipmi_against_ipmi_sim_and_a_real_guest(
    ipmi_sim: tuple[int, int, Path], guest_vm: GuestVM
) -> None:
    """ipmitool -> ipmi_sim (RMCP+) -> QEMU's ipmi-bmc-extern -> the guest.

    ipmi_sim (OpenIPMI 2.0.33) implements power status, hard reset and soft off for a VM, but answers
    "pulse diagnostic interrupt" (``chassis power diag``, our NMI) with "Invalid data field": the NMI
    path is therefore only proven to fail clearly here; the fake-ipmitool tests above prove its argv.
    """
    lan_port, vm_port, password_file = ipmi_sim
    config = IpmiConfig(
        host="127.0.0.1", port=lan_port, username="admin", password_file=str(password_file), cipher_suite=3
    )
    adapter = IpmiAdapter(config)
    assert (await adapter.state_report()).state is VmState.STOPPED  # no VM attached to the BMC yet

    # reconnect=1: QEMU 7.2's ipmi-bmc-extern segfaults when its chardev connects synchronously at start-up.
    bmc = [
        "-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={vm_port},reconnect=1",
        "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0",
        "-device", "isa-ipmi-kcs,bmc=bmc0",
    ]  # fmt: skip
    await guest_vm.start(paused=True, qemu_args=bmc)
    console = await SerialConsole.connect(guest_vm.serial_socket)
    try:
        await guest_vm.cont()
        start = (await console.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S)).end()
        report = await adapter.state_report()
        assert (report.state, report.reason) == (VmState.RUNNING, "chassis power is on (BMC 127.0.0.1)")

        with pytest.raises(AdapterError) as caught:
            await adapter.nmi()
        assert caught.value.kind is AdapterErrorKind.REFUSED
        assert "chassis power diag" in str(caught.value)
        assert "Invalid data field" in str(caught.value)

        await adapter.reset()  # BMC hard reset -> QEMU resets the guest
        start = (await console.expect(KERNEL_START, BOOT_TIMEOUT_S, start)).end()
        start = (await console.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S, start)).end()

        await adapter.restart()  # BMC soft off -> ACPI power button -> the guest powers off, QEMU exits
        start = (await console.expect(POWER_BUTTON, 20, start)).end()
        await console.expect(POWER_DOWN, 20, start)
        assert await guest_vm.wait_exited(20)
        assert (await adapter.state_report()).state is VmState.STOPPED
    finally:
        await console.close()


# ----------------------------------------------------------------------------------------------------
# libvirt adapter against libvirt's test driver (a real libvirt API, no hypervisor)


def libvirt_adapter(domain: str = "test") -> LibvirtAdapter:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed (optional extra)")
    return LibvirtAdapter(LibvirtConfig(uri="test:///default", domain=domain, timeout_s=5.0))


@pytest.mark.asyncio
async def test_libvirt_against_the_test_driver() -> None:
    adapter = libvirt_adapter()
    try:
        assert adapter.description == "libvirt test:///default domain test"
        report = await adapter.state_report()
        assert report.state is VmState.RUNNING
        await adapter.nmi()
        await adapter.reset()
        await adapter.restart()
        assert await adapter.state() is VmState.RUNNING

        # test:///default is private to each connection, so set up through the adapter's own one.
        await adapter._call("suspend", lambda: adapter._domain().suspend())
        assert await adapter.state() is VmState.PAUSED
        await adapter.start()  # resumes a paused domain
        assert await adapter.state() is VmState.RUNNING
        await adapter._call("destroy", lambda: adapter._domain().destroy())
        report = await adapter.state_report()
        assert report.state is VmState.STOPPED
        assert report.reason.startswith("shut off")
        await adapter.start()  # boots a shut-off domain
        assert await adapter.state() is VmState.RUNNING
    finally:
        await adapter.close()


@pytest.mark.asyncio
async def test_libvirt_unknown_domain_is_a_clear_error() -> None:
    adapter = libvirt_adapter("no-such-vm")
    try:
        with pytest.raises(AdapterError) as caught:
            await adapter.nmi()
        assert caught.value.kind is AdapterErrorKind.UNAVAILABLE
        assert str(caught.value).startswith(
            "libvirt test:///default domain no-such-vm: nmi failed: Domain not found"
        )
        report = await adapter.state_report()
        assert report.state is VmState.UNKNOWN
        assert "Domain not found" in report.reason
    finally:
        await adapter.close()
