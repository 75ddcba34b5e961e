"""Recognising a full storage from the errors Python and Rust-backed libraries raise."""

from __future__ import annotations

import errno

import pytest

from jobs.errors import is_storage_full


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_os_errors_of_a_full_storage(code):
    assert is_storage_full(OSError(code, "full"))


def test_other_os_errors_are_not_storage_full():
    assert not is_storage_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_storage_full(FileNotFoundError(errno.ENOENT, "gone"))


def test_a_rust_library_error_wrapping_an_os_error():
    class SafetensorError(Exception):  # what safetensors raises when its write fails
        pass

    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    denied = SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")
    assert is_storage_full(full) and not is_storage_full(denied)
    assert not is_storage_full(ValueError("28 samples"))
