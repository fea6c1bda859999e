"""Fixtures shared by the end-to-end tests (real programs, sockets, PTYs and QEMU guests)."""

from __future__ import annotations

from .guest_support import guest_image, guest_vm

__all__ = ["guest_image", "guest_vm"]
