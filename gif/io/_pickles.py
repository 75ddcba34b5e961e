"""A static check of the pickles in a PyTorch file, run before ``torch.load(weights_only=True)``.

The weights-only unpickler refuses code, but not every denial of service: a few hundred bytes of
pickle can build a tuple of tuples that shares its halves (``t[k+1] = (t[k], t[k])``), whose hash
(taken when it becomes a dict key or a set element) or ``str`` takes ``2**depth`` steps; a deeply
nested tuple key overflows the C stack when hashed; and a large pickle of trivial opcodes takes
minutes to unpickle. This walks the opcodes once (no object is built) and refuses such files.

Tuples are immutable, so their expanded size (nodes, counting a shared sub-tuple each time it
occurs) and depth are exact; mutable containers count as one node, because hashing one fails
at once. Every value pushed on the stack adds its expanded size to a budget, which bounds the
hashing and printing that loading the file can do.
"""

from __future__ import annotations

import io
import os
import pickletools
import zipfile
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from ._files import ZIP_MAGIC, PathLike

#: Largest pickle part (a zip checkpoint's ``data.pkl``, or the pickles heading a legacy file).
MAX_PICKLE_BYTES = 16 * 1024 * 1024
#: Budget of expanded nodes pushed while unpickling: this plus 16 per byte of pickle.
MAX_EXPANDED_NODES = 1_000_000
#: Deepest tuple nesting accepted.
MAX_TUPLE_DEPTH = 1_000
#: Pickles read at the start of a legacy (non-zip) file: magic number, protocol, sys info,
#: the state, the storage keys.
LEGACY_PICKLES = 5

_OPAQUE = (1, 0)  # (expanded size, tuple depth) of anything but a tuple
_TUPLES = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}
_STOP, _MARK, _PUT, _MEMOIZE, _GET, _DUP, _TUPLE, _OTHER = range(8)
#: Opcodes with an action of their own; any other pops its operands and pushes opaque values.
_ACTIONS = dict.fromkeys(_TUPLES, _TUPLE) | {
    "STOP": _STOP, "MARK": _MARK, "MEMOIZE": _MEMOIZE, "DUP": _DUP, "PUT": _PUT, "BINPUT": _PUT,
    "LONG_BINPUT": _PUT, "GET": _GET, "BINGET": _GET, "LONG_BINGET": _GET,
}  # fmt: skip


def _plan(op: pickletools.OpcodeInfo) -> tuple[int, bool, int, int]:
    """(action, whether it pops back to a mark, operands popped [below the mark for marked ones],
    values pushed) of an opcode."""
    before = op.stack_before
    marked = pickletools.markobject in before
    below = before.index(pickletools.markobject) if marked else len(before)
    return _ACTIONS.get(op.name, _OTHER), marked, below, len(op.stack_after)


_PLANS = {op.code: _plan(op) for op in pickletools.opcodes}


class PickleBomb(Exception):
    """A pickle whose loading would take exponential time or overflow the stack."""


class PickleTooLarge(Exception):
    """A pickle part over :data:`MAX_PICKLE_BYTES`."""


def check_torch_file(path: PathLike) -> None:
    """Scan the pickles of a PyTorch file (zip or legacy) before it is unpickled.

    Raises:
        PickleBomb: a pickle that would hash or print exponentially many nodes, or nest too deep.
        PickleTooLarge: a pickle part over :data:`MAX_PICKLE_BYTES`.

    Anything that is not a well-formed pickle is left to ``torch.load`` to report.
    """
    with open(path, "rb") as f:
        if f.read(4).startswith(ZIP_MAGIC):
            _check_zip(path)
            return
        f.seek(0)
        buffer = io.BytesIO(f.read(MAX_PICKLE_BYTES + 1))
    for _ in range(LEGACY_PICKLES):
        if not check_pickle(buffer, MAX_PICKLE_BYTES):
            return


def _check_zip(path: PathLike) -> None:
    """Every ``data.pkl`` record, whatever its folder (torch reads the one in the folder of the
    archive's first entry; duplicates and decoys are checked all the same)."""
    try:
        archive = zipfile.ZipFile(os.fspath(path))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # torch reports it
    total = 0
    with archive:
        for info in archive.infolist():
            if info.filename.rsplit("/", 1)[-1] != "data.pkl":
                continue
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                continue  # torch reads stored and deflated records only, and reports the rest
            total += info.file_size
            if total > MAX_PICKLE_BYTES:
                raise PickleTooLarge(
                    f"its pickle {info.filename!r} is {info.file_size} bytes, over the limit of "
                    f"{MAX_PICKLE_BYTES} (a state dict's pickle is a few bytes per tensor)"
                )
            try:
                with archive.open(info) as member:
                    data = member.read(MAX_PICKLE_BYTES + 1)
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, RuntimeError, ValueError):
                continue  # corrupt member: torch reports it
            check_pickle(io.BytesIO(data), MAX_PICKLE_BYTES)


def check_pickle(f: BinaryIO, end: int) -> bool:
    """Walk one pickle from ``f``'s position; False if it is not a well-formed pickle.

    An opcode at offset ``end`` or beyond means the pickle is too large.

    Raises:
        PickleBomb, PickleTooLarge: as :func:`check_torch_file`.
    """
    start = f.tell()
    stack: list[tuple[int, int]] = []
    marks: list[int] = []
    memo: dict[int, tuple[int, int]] = {}
    pushed = 0
    try:
        # genops gives a position for each opcode when the file has tell(); ``f`` has it.
        ops = cast("Iterator[tuple[pickletools.OpcodeInfo, Any, int]]", pickletools.genops(f))
        for op, arg, pos in ops:
            action, marked, n, after = _PLANS[op.code]
            floor = marks[-1] if marks else 0
            if action == _STOP:
                return True
            if action == _MARK:
                marks.append(len(stack))
            elif action in (_PUT, _MEMOIZE, _DUP) and len(stack) <= floor:
                return False
            elif action in (_PUT, _MEMOIZE):
                memo[len(memo) if action == _MEMOIZE else arg] = stack[-1]
            elif action in (_GET, _DUP):
                item = memo[arg] if action == _GET else stack[-1]
                stack.append(item)
                pushed += item[0]
            else:  # pop the operands (back to the mark and ``n`` below it, or ``n``), push the results
                if marked:
                    if not marks:
                        return False
                    k = marks.pop()
                else:
                    k = len(stack) - n
                    if n and k < floor:
                        return False
                children = stack[k:]
                del stack[k:]
                if marked and n:
                    del stack[-n:]
                new = [_OPAQUE] * after
                if action == _TUPLE:
                    new = [(1 + sum(c[0] for c in children), 1 + max((c[1] for c in children), default=0))]
                    if new[0][1] > MAX_TUPLE_DEPTH:
                        raise PickleBomb(f"it nests tuples more than {MAX_TUPLE_DEPTH} deep")
                stack.extend(new)
                pushed += sum(size for size, _ in new)
            if pos >= end:
                raise PickleTooLarge(f"its pickle data is over the limit of {MAX_PICKLE_BYTES} bytes")
            if pushed > MAX_EXPANDED_NODES + 16 * (pos - start + 1):
                raise PickleBomb(
                    "its pickle shares sub-tuples so that loading it would hash or print more than "
                    f"{pushed} nodes from {pos - start + 1} bytes (a pickle bomb)"
                )
    except (ValueError, KeyError, IndexError, EOFError, TypeError):
        return False  # not a well-formed pickle: torch reports it
    return False  # no STOP: truncated
