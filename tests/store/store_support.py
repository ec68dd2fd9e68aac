"""Helpers for store tests that need a real file system in a given state (needs root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def require_mount() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs / read-only bind mount")


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real, small file system: writes past its size fail with ENOSPC."""
    require_mount()
    where.mkdir(parents=True, exist_ok=True)
    try:
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount tmpfs here: {exc}")
    try:
        yield where
    finally:
        _run("umount", "-l", str(where))


@contextlib.contextmanager
def read_only_view(source: Path, where: Path) -> Iterator[Path]:
    """`source` seen through a read-only bind mount: writes fail with EROFS."""
    require_mount()
    where.mkdir(parents=True, exist_ok=True)
    try:
        _run("mount", "--bind", str(source), str(where))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot bind-mount here: {exc}")
    try:
        _run("mount", "-o", "remount,bind,ro", str(where))
        yield where
    finally:
        _run("umount", "-l", str(where))


def fill(directory: Path) -> Path:
    """Write a file until the file system holding `directory` is full; returns the file."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        small = b"\0" * 512
        try:
            while True:
                f.write(small)
        except OSError:
            pass
    return filler
