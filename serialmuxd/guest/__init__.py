"""serialmuxd's own test guest: a tiny Linux VM under QEMU with COM1 and QMP on unix sockets.

Used by the real-QEMU tests and by ``serialmuxd demo --qemu``.  Everything it needs ships in this package
(``build-guest.sh``, ``run-guest.sh``); the built kernel and initramfs live in a cache outside the repo
(``default_cache_dir()``).  See ``vm.py`` for the API and the scripts' headers for every knob.
"""

from __future__ import annotations

from .vm import (
    BANNER,
    BUILD_SCRIPT,
    GUEST_CACHE_ENV,
    KERNEL_START,
    LOGIN_PROMPT,
    NMI_CONTINUE,
    NMI_PANIC,
    NMI_PATTERN,
    PASSWORD_PROMPT,
    POWER_BUTTON,
    POWER_DOWN,
    QEMU_BINARY,
    ROOT_PROMPT,
    RUN_SCRIPT,
    GuestError,
    GuestImage,
    GuestVM,
    default_cache_dir,
    ensure_guest,
    qemu_binary,
    qmp_execute_once,
)

__all__ = [
    "BANNER",
    "BUILD_SCRIPT",
    "GUEST_CACHE_ENV",
    "KERNEL_START",
    "LOGIN_PROMPT",
    "NMI_CONTINUE",
    "NMI_PANIC",
    "NMI_PATTERN",
    "PASSWORD_PROMPT",
    "POWER_BUTTON",
    "POWER_DOWN",
    "QEMU_BINARY",
    "ROOT_PROMPT",
    "RUN_SCRIPT",
    "GuestError",
    "GuestImage",
    "GuestVM",
    "default_cache_dir",
    "ensure_guest",
    "qemu_binary",
    "qmp_execute_once",
]
