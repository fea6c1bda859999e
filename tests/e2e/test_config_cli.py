"""Configuration problems through the installed ``serialmuxd`` script, as an operator meets them: files the
TOML parser cannot take (arrays nested 600 deep, inline tables as deep, integers of thousands of digits)
give one ``FILE: (toml): reason`` line and exit status 2 from both ``check-config`` and ``run``, never a
traceback; ``[ports.hypervisor]`` problems come in the same words as the rest of the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The console script pip installed next to this interpreter (.venv/bin/serialmuxd), not `python -m`: its
# entry point is part of what is tested.
SERIALMUXD = Path(sys.executable).parent / "serialmuxd"
EXIT_CONFIG = 2
TOO_DEEP = (
    "arrays or inline tables are nested too deeply to read (the TOML parser gives up after a few hundred "
    "levels; serialmuxd's keys need at most four)"
)
PORT = '[[ports]]\nname = "vm1"\ndevice = "exec:/bin/cat"\ntelnet = "127.0.0.1:0"\n'


def serialmuxd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SERIALMUXD), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_the_script_is_installed() -> None:
    assert SERIALMUXD.is_file(), f"{SERIALMUXD} missing: pip install -e . into this interpreter's venv"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x = " + "[" * 600 + "]" * 600 + "\n", TOO_DEEP),
        ("x = " + "{a = " * 600 + "1" + "}" * 600 + "\n", TOO_DEEP),
        (
            PORT + "replay_lines = " + "9" * 5000 + "\n",
            "an integer of more than 4300 digits; Python refuses to read it (at line 5, column 16)",
        ),
    ],
    ids=["nested-arrays", "nested-inline-tables", "huge-integer"],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_what_the_parser_cannot_take_is_one_line_and_exit_2(
    tmp_path: Path, text: str, reason: str, command: str
) -> None:
    path = write(tmp_path, text)
    args = ["check-config", str(path)] if command == "check-config" else ["run", "--config", str(path)]
    done = serialmuxd(*args)
    assert (done.returncode, done.stderr, done.stdout) == (EXIT_CONFIG, f"{path}: (toml): {reason}\n", "")


def test_a_huge_hex_integer_is_an_ordinary_range_problem(tmp_path: Path) -> None:
    path = write(tmp_path, PORT + "replay_lines = 0x" + "f" * 20000 + "\n")
    done = serialmuxd("check-config", str(path))
    assert done.returncode == EXIT_CONFIG
    assert done.stderr == (
        f"{path}: ports[0].replay_lines: must be between 0 and 100000, got 0x" + "f" * 55 + "...\n"
    )


def test_hypervisor_problems_in_the_same_words_all_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        PORT + 'takover = "ask"\n[ports.hypervisor]\ntype = "qmp"\nsokcet = "/run/q.sock"\ntimeout_s = "5"\n',
    )
    done = serialmuxd("check-config", str(path))
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines() == [
        f"{path}: ports[0].takover: unknown key; did you mean 'takeover'?",
        f"{path}: ports[0].hypervisor.sokcet: unknown key; did you mean 'socket'?",
        f"{path}: ports[0].hypervisor.timeout_s: expected number, got string '5'",
        f"{path}: ports[0].hypervisor.socket: required key is missing",
    ]


def test_the_example_with_the_new_keys_still_checks(tmp_path: Path) -> None:
    text = (ROOT / "config.example.toml").read_text()
    path = write(
        tmp_path,
        text.replace(
            "[defaults]\n",
            '[defaults]\ntakeover = "ask"\nask_timeout_s = 20\nnotices = "none"\nmax_sessions = 10\n',
            1,
        ),
    )
    done = serialmuxd("check-config", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{path}: OK (4 ports)\n", "")


def test_the_old_rate_name_is_accepted_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, '[[ports]]\nname = "a"\ndevice = "exec:/bin/cat"\ninput_rate_bps = 100\n')
    out = serialmuxd("check-config", str(path))
    assert out.returncode == 0 and "OK" in out.stdout
    assert out.stderr.strip() == (
        f"{path}: ports[0].input_rate_bps: warning: deprecated: it is read as bytes per second (not bits, as "
        "'bps' suggests); rename it to input_rate_bytes_per_s"
    )
