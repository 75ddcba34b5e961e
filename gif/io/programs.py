"""Exported programs (the ``.pt2`` archives of ``torch.export.save``), read without pickle.

``torch.export.load`` trusts its archive: a weight or constant whose config says ``use_pickle``
is read with ``torch.load(weights_only=False)``, custom and opaque objects with pickle, the
sample inputs fall back to ``weights_only=False`` when the safe load fails, shape expressions go
through ``sympy.sympify`` (an ``eval``), the program's ``guards_code`` is ``exec``-ed by
``ExportedProgram.module()``, and an AOTInductor folder holds native code. So a hostile ``.pt2``
runs code when loaded. This module never calls ``torch.export.load`` on an upload:

* :func:`check_program` reads the zip's directory and JSON records only (no tensor, no pickle)
  and refuses everything but a plain exported program: unexpected or odd members (absolute
  paths, ``..``, links, compressed or oversized entries, duplicates), pickled entries, custom
  objects, native code, guard code, shape expressions outside a small arithmetic grammar, graph
  calls outside ATen and ``operator``, inputs or outputs that are not one tensor each, buffer
  mutations (a program exported in training mode), and no dynamic batch dimension. The sample
  inputs' pickle may name only the globals a tensor needs, so even torch's fallback could not
  run code on it.
* :func:`load_program` then builds every weight and constant from its raw bytes with the dtype,
  shape and strides of its JSON config, and deserialises the graph from the JSON with those
  tensors (torch's own deserializer, handed tensors instead of bytes; the sample inputs are left
  out, so no unpickler runs at all).
* :func:`program_module` turns the program into the ``nn.Module`` the engine edits: the
  ``ExportedProgram.module()`` graph, with ``train()``/``eval()`` restored (the graph is fixed at
  export: the flags change nothing) and each ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d``
  call on a layer's own weight turned back into an ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d``
  module, so the per-layer selection strategies see layers. Parameter names stay those of the
  original module's ``state_dict``.
* :func:`save_program` writes the program again with new weights (``torch.export.save``).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickletools
import re
import stat
import sys
import tokenize
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnsafeCheckpointError
from ._files import PathLike
from ._pickles import MAX_PICKLE_BYTES, PickleBomb, PickleTooLarge, check_pickle

__all__ = [
    "ProgramError",
    "ProgramInfo",
    "StaticBatchError",
    "UnsafeProgramError",
    "check_program",
    "load_program",
    "program_module",
    "save_program",
]

#: Most members an archive may hold, and the largest JSON record read.
MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 256 * 1024 * 1024
#: The one program an archive may hold (``torch.export.save`` names it ``model``).
MODEL = "model"

_WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
_CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
_MODEL_JSON = f"models/{MODEL}.json"
_SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
          _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _MODEL_JSON, _SAMPLE_INPUTS}  # fmt: skip
_PAYLOAD = re.compile(r"^data/(weights/weight|constants/tensor)_\d{1,9}$")
_EXTRA = re.compile(r"^extra/[A-Za-z0-9_.-]{1,128}$")
#: A parameter / buffer name: dotted components of word characters, none of them a dunder.
_FQN = re.compile(r"^(?!(.*\.)?__\w*__(\.|$))\w{1,128}(\.\w{1,128}){0,32}$", re.ASCII)
#: What a refused member is, by where it sits (for the message).
_KNOWN_DANGERS = (
    ("data/aotinductor/", "AOTInductor native code"),
    ("data/executorch/", "an ExecuTorch payload"),
    ("data/mtia", "an MTIA payload"),
    ("xl_model_weights/", "weights outside the program's configs"),
    ("data/constants/custom_obj_", "a custom object (pickle)"),
    ("data/constants/opaque_obj_", "an opaque object (pickle)"),
    ("data/weights/", "a legacy pickled weights file"),
    ("data/constants/", "a legacy pickled constants file"),
    ("models/", "a second program"),
)

#: Graph calls allowed: ATen operators, ``operator`` functions, symbolic-size helpers.
_TARGET = re.compile(
    r"^(torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.[a-z_]+|torch\.sym_[a-z_]+)$"
)
#: Names a shape expression may use (sympy classes and torch's sympy functions), and symbols.
_EXPR_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "positive", "integer",
    "nonnegative", "real", "oo", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity",
})  # fmt: skip
_SYMBOL = re.compile(r"^[a-z]{1,8}\d{1,9}$")
_EXPR_OPS = frozenset(
    {"(", ")", ",", "+", "-", "*", "/", "%", "**", "//", "=", "==", "!=", "<", "<=", ">", ">="}
)
_EXPR_STRING = re.compile(r"^'[a-z]{1,8}\d{1,9}'$")
#: Globals the sample inputs' pickle may name: what a tuple / dict of tensors needs.
_SAMPLE_GLOBALS = frozenset(
    {"torch._utils _rebuild_tensor_v2", "collections OrderedDict", "torch device"}
    | {f"torch {kind}Storage" for kind in (
        "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "ComplexFloat",
        "ComplexDouble",
    )}
)  # fmt: skip
_FORBIDDEN_OPS = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})


class ProgramError(CheckpointError):
    """A ``.pt2`` that is not a usable exported program (``checkpoint_incompatible``)."""


class UnsafeProgramError(UnsafeCheckpointError):
    """A ``.pt2`` that loading could make run code (``checkpoint_unsafe``)."""


class StaticBatchError(ProgramError):
    """An exported program whose input has a fixed batch size."""


@dataclass
class ProgramInfo:
    """What the static check learnt of a program, without loading it."""

    root: str
    parameters: dict[str, list[int]]
    buffers: dict[str, list[int]]
    input_shape: list[int | None]
    input_dtype: str
    num_outputs: int | None
    members: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-ready metadata (the artifact's record)."""
        return {
            "format": "torch.export",
            "input_shape": self.input_shape,
            "input_dtype": self.input_dtype,
            "num_classes": self.num_outputs,
            "parameters": dict(list(self.parameters.items())[:1000]),
            "n_parameters": sum(math.prod(s) for s in self.parameters.values()),
            "buffers": sorted(self.buffers)[:1000],
        }


# -- the static check -----------------------------------------------------------------------------


def check_program(path: PathLike) -> ProgramInfo:
    """Check a ``.pt2`` archive without loading anything it holds.

    Raises:
        UnsafeProgramError: a member or record that loading could make run code.
        StaticBatchError: the input's first dimension is not dynamic.
        ProgramError: anything else that is not one plain exported program.
    """
    with _open(path) as archive:
        root, members = _members(archive, os.path.getsize(path))
        read = _Reader(archive, root, members)
        _check_header(read)
        weights = _payloads(read, _WEIGHTS_CONFIG, "weight")
        constants = _payloads(read, _CONSTANTS_CONFIG, "tensor")
        program = read.json(_MODEL_JSON)
        if _SAMPLE_INPUTS in members:
            _check_sample_inputs(read.bytes(_SAMPLE_INPUTS))
    info = _check_graph(program, weights, constants)
    info.root, info.members = root, members
    return info


def _open(path: PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(os.fspath(path))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ProgramError(f"not a .pt2 archive (torch.export.save writes a zip file): {exc}") from None


def _members(archive: zipfile.ZipFile, size: int) -> tuple[str, dict[str, int]]:
    """The archive's root folder and its members (path under the root -> size)."""
    infos = archive.infolist()
    if not infos or len(infos) > MAX_MEMBERS:
        raise ProgramError(f"the archive holds {len(infos)} members (1 to {MAX_MEMBERS} expected)")
    root = infos[0].filename.split("/", 1)[0]
    members: dict[str, int] = {}
    for info in infos:
        name = _member_name(info, root)
        if name in members:
            raise UnsafeProgramError(f"member {info.filename!r} appears twice in the archive")
        members[name] = info.file_size
    total = sum(members.values())
    if total > size:
        raise ProgramError(f"the members add up to {total} bytes, more than the {size}-byte archive")
    for name in members:
        _check_member_path(name)
    return root, members


def _member_name(info: zipfile.ZipInfo, root: str) -> str:
    raw = info.filename
    parts = raw.split("/")
    if raw.startswith(("/", "\\")) or "\\" in raw or "\x00" in raw or re.match(r"^[A-Za-z]:", raw):
        raise UnsafeProgramError(f"member {raw!r} has an absolute or odd path")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeProgramError(f"member {raw!r} has an empty, '.' or '..' path component")
    mode = info.external_attr >> 16
    if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: no Unix mode recorded
        raise UnsafeProgramError(f"member {raw!r} is a link, a folder or a device, not a file")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise UnsafeProgramError(
            f"member {raw!r} is compressed (torch.export.save stores every member uncompressed)"
        )
    if info.flag_bits & 0x1:
        raise ProgramError(f"member {raw!r} is encrypted")
    if len(parts) < 2 or parts[0] != root:
        raise ProgramError(f"member {raw!r} is outside the archive's folder {root!r}")
    return raw[len(root) + 1 :]


def _check_member_path(name: str) -> None:
    if name in _FIXED or _PAYLOAD.match(name) or _EXTRA.match(name):
        return
    what = next((why for prefix, why in _KNOWN_DANGERS if name.startswith(prefix)), "an unexpected member")
    error = ProgramError if what in ("an unexpected member", "a second program") else UnsafeProgramError
    raise error(f"member {name!r} is {what}; only a plain torch.export program is accepted")


@dataclass
class _Reader:
    archive: zipfile.ZipFile
    root: str
    members: dict[str, int]

    def bytes(self, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
        if name not in self.members:
            raise ProgramError(f"the archive has no {name!r} (not written by torch.export.save?)")
        if self.members[name] > limit:
            raise ProgramError(f"{name!r} is {self.members[name]} bytes, over the limit of {limit}")
        try:
            return self.archive.read(f"{self.root}/{name}")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
            raise ProgramError(f"cannot read {name!r}: {exc}") from None

    def text(self, name: str) -> str:
        try:
            return self.bytes(name, 1024).decode("ascii").strip()
        except UnicodeDecodeError:
            raise ProgramError(f"{name!r} is not ASCII text") from None

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.bytes(name))
        except (ValueError, RecursionError) as exc:
            raise ProgramError(f"{name!r} is not valid JSON: {str(exc)[:200]}") from None


def _check_header(read: _Reader) -> None:
    from torch.export.pt2_archive import constants

    for name, value in (
        ("archive_format", constants.ARCHIVE_FORMAT_VALUE),
        ("archive_version", constants.ARCHIVE_VERSION_VALUE),
    ):
        found = read.text(name)
        if found != value:
            raise ProgramError(f"{name!r} is {found[:32]!r}, expected {value!r} (torch.export.save's format)")
    if "byteorder" in read.members and read.text("byteorder") != sys.byteorder:
        raise ProgramError(f"the archive's byte order is not this machine's ({sys.byteorder})")


# -- weights and constants -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Payload:
    """One weight / constant: its record, dtype and strided view, whether it is a parameter."""

    record: str
    dtype: torch.dtype
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int
    is_param: bool
    requires_grad: bool


def _payloads(read: _Reader, config_name: str, prefix: str) -> dict[str, _Payload]:
    config = read.json(config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ProgramError(f"{config_name!r} has no 'config' object")
    folder = config_name.rsplit("/", 1)[0]
    found = {}
    for fqn, entry in entries.items():
        if not isinstance(fqn, str) or not _FQN.match(fqn):
            raise ProgramError(f"{config_name!r} names an invalid tensor {str(fqn)[:80]!r}")
        found[fqn] = _payload(read, folder, prefix, fqn, entry)
    return found


def _payload(read: _Reader, folder: str, prefix: str, fqn: str, entry: Any) -> _Payload:
    if not isinstance(entry, dict):
        raise ProgramError(f"{fqn!r}: its config is not an object")
    if entry.get("use_pickle") is not False:
        raise UnsafeProgramError(
            f"{fqn!r} is stored as a pickle (use_pickle), which torch.export.load would unpickle "
            "with weights_only=False"
        )
    path_name = entry.get("path_name")
    record = f"{folder}/{path_name}"
    if not isinstance(path_name, str) or not path_name.startswith(f"{prefix}_") or record not in read.members:
        raise ProgramError(f"{fqn!r}: record {str(path_name)[:80]!r} is not in the archive")
    meta = entry.get("tensor_meta")
    if not isinstance(meta, dict):
        raise ProgramError(f"{fqn!r}: no tensor_meta")
    layout = _tensor_layout(fqn, meta, read.members[record])
    return _Payload(record, *layout, entry.get("is_param") is True, meta.get("requires_grad") is True)


def _tensor_layout(fqn: str, meta: dict[str, Any], nbytes: int) -> tuple[torch.dtype, tuple, tuple, int]:
    """Dtype, sizes, strides and offset of a tensor, checked to lie within its ``nbytes``-byte record."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE, _SERIALIZE_TO_TORCH_LAYOUT

    dtype = _SERIALIZE_TO_TORCH_DTYPE.get(meta.get("dtype"))
    if dtype is None:
        raise ProgramError(f"{fqn!r}: unknown dtype code {meta.get('dtype')!r}")
    if _SERIALIZE_TO_TORCH_LAYOUT.get(meta.get("layout")) is not torch.strided:
        raise ProgramError(f"{fqn!r}: only strided (dense) tensors are supported")
    sizes = tuple(_static_int(fqn, s) for s in meta.get("sizes") or [])
    strides = tuple(_static_int(fqn, s) for s in meta.get("strides") or [])
    offset = _static_int(fqn, meta.get("storage_offset") or {"as_int": 0})
    if len(sizes) != len(strides) or len(sizes) > 16:
        raise ProgramError(f"{fqn!r}: sizes {list(sizes)} and strides {list(strides)} do not match")
    element = torch.empty((), dtype=dtype).element_size()
    if nbytes % element:
        raise ProgramError(f"{fqn!r}: its record's {nbytes} bytes are not a whole number of {dtype}")
    last = offset + sum((n - 1) * st for n, st in zip(sizes, strides, strict=True))
    if all(sizes) and (last + 1) * element > nbytes:
        raise ProgramError(f"{fqn!r}: shape {list(sizes)} reaches past the end of its {nbytes}-byte record")
    return dtype, sizes, strides, offset


def _static_int(fqn: str, value: Any) -> int:
    number = value.get("as_int") if isinstance(value, dict) else None
    if type(number) is not int or not 0 <= number < 2**62:
        raise ProgramError(f"{fqn!r}: sizes, strides and offsets must be non-negative integers")
    return number


# -- the sample inputs ----------------------------------------------------------------------------


def _check_sample_inputs(data: bytes) -> None:
    """The sample inputs are a ``torch.save`` zip; its pickle may name tensor-rebuilding globals only."""
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
        pickles = [i for i in inner.infolist() if i.filename.rsplit("/", 1)[-1] == "data.pkl"]
        if len(pickles) != 1 or pickles[0].file_size > MAX_PICKLE_BYTES:
            raise UnsafeProgramError("the sample inputs do not hold exactly one small pickle")
        pickled = inner.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise UnsafeProgramError(
            f"the sample inputs are not a torch.save archive ({exc}): torch.export.load would unpickle "
            "them with weights_only=False"
        ) from None
    _check_sample_globals(pickled)
    try:
        if not check_pickle(io.BytesIO(pickled), MAX_PICKLE_BYTES):
            raise UnsafeProgramError("the sample inputs' pickle is malformed")
    except (PickleBomb, PickleTooLarge) as exc:
        raise UnsafeProgramError(f"the sample inputs' pickle: {exc}") from None


def _check_sample_globals(pickled: bytes) -> None:
    try:
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickled)]
    except (ValueError, EOFError) as exc:
        raise UnsafeProgramError(f"the sample inputs' pickle is malformed: {exc}") from None
    for name, arg in ops:
        if name in _FORBIDDEN_OPS or (name == "GLOBAL" and arg not in _SAMPLE_GLOBALS):
            raise UnsafeProgramError(
                f"the sample inputs' pickle names {str(arg if name == 'GLOBAL' else name)[:80]!r}, which "
                "would execute code when torch.export.load unpickles it"
            )


# -- the program ----------------------------------------------------------------------------------


def _check_graph(program: Any, weights: dict[str, _Payload], constants: dict[str, _Payload]) -> ProgramInfo:
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise ProgramError("models/model.json is not a serialized exported program")
    _check_version(program)
    module = program["graph_module"]
    params, buffers = _signature_inputs(module, weights, constants)
    if program.get("guards_code"):
        raise UnsafeProgramError(
            "the program carries guard code (Python source that ExportedProgram.module() executes); "
            "export with torch.export.export (non-strict), which writes none"
        )
    for expression in _values_of(program, "expr_str"):
        _check_expression(expression)
    for target in _values_of(program, "target"):
        if not isinstance(target, str) or not _TARGET.match(target):
            raise ProgramError(
                f"the graph calls {str(target)[:120]!r}; only ATen operators are supported "
                "(no custom operators, control flow or subgraphs)"
            )
    _check_eval_mode(program)
    tensor_values = module.get("graph", {}).get("tensor_values", {})
    shape, dtype = _input_meta(module, tensor_values)
    return ProgramInfo("", params, buffers, shape, dtype, _num_outputs(module, tensor_values))


def _check_eval_mode(program: dict[str, Any]) -> None:
    """No in-place operator (a program that updates its own buffers on every call) and no
    ``training=True`` argument (batch statistics, active dropout): the engine needs a fixed function."""
    for node in _values_of(program, "nodes"):
        for call in node if isinstance(node, list) else []:
            target = str(call.get("target", "")) if isinstance(call, dict) else ""
            name = target.split(".")[-2] if target.count(".") >= 2 else ""
            training = any(
                isinstance(arg, dict) and arg.get("name") in ("training", "train")
                and (arg.get("arg") or {}).get("as_bool") is True
                for arg in call.get("inputs") or []
            ) if isinstance(call, dict) else False  # fmt: skip
            if name.endswith("_") or training:
                raise ProgramError(
                    f"the program calls {target} {'in training mode' if training else 'in place'} (exported "
                    "in training mode?); call model.eval() before torch.export.export"
                )


def _check_version(program: dict[str, Any]) -> None:
    from torch._export.serde.schema import SCHEMA_VERSION

    version = program.get("schema_version")
    major = version.get("major") if isinstance(version, dict) else None
    if major != SCHEMA_VERSION[0]:
        raise ProgramError(
            f"the program's schema version {major} is not this server's ({SCHEMA_VERSION[0]}); "
            f"export it with torch {torch.__version__.split('+')[0]}"
        )


def _values_of(tree: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a JSON tree (iteratively: no recursion limit)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k == key:
                    yield v
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))


def _check_expression(expression: Any) -> None:
    """A shape expression goes through ``sympy.sympify`` (an ``eval``): only names, numbers and
    operators of size arithmetic may appear."""
    if not isinstance(expression, str) or len(expression) > 4096:
        raise UnsafeProgramError("a shape expression is not a short string")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expression).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise UnsafeProgramError(f"shape expression {expression[:80]!r} does not parse: {exc}") from None
    for token in tokens:
        if not _allowed_token(token):
            raise UnsafeProgramError(
                f"shape expression {expression[:80]!r} holds {token.string[:40]!r}; it would be evaluated "
                "by sympy.sympify when the program is loaded"
            )


def _allowed_token(token: tokenize.TokenInfo) -> bool:
    if token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.NUMBER):
        return (
            token.type != tokenize.NUMBER or re.fullmatch(r"\d{1,30}(\.\d{1,30})?", token.string) is not None
        )
    if token.type == tokenize.NAME:
        return token.string in _EXPR_NAMES or _SYMBOL.match(token.string) is not None
    if token.type == tokenize.STRING:
        return _EXPR_STRING.match(token.string) is not None
    return token.type == tokenize.OP and token.string in _EXPR_OPS


def _signature_inputs(
    module: dict[str, Any], weights: dict[str, _Payload], constants: dict[str, _Payload]
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Parameters and buffers named by the signature, each with a payload; one tensor user input."""
    signature = module.get("signature") or {}
    params: dict[str, list[int]] = {}
    buffers: dict[str, list[int]] = {}
    users = 0
    for spec in signature.get("input_specs") or []:
        kind, body = _only_item(spec, "input spec")
        if kind in ("parameter", "buffer"):  # a non-persistent buffer may be stored as a constant
            name = str(body.get(f"{kind}_name"))
            pool = weights if kind == "parameter" or body.get("persistent") else {**weights, **constants}
            (params if kind == "parameter" else buffers)[name] = list(_require(pool, name, kind).sizes)
        elif kind == "tensor_constant":
            _require(constants, body.get("tensor_constant_name"), "constant")
        elif kind == "user_input":
            users += 1
            if "as_tensor" not in (body.get("arg") or {}):
                raise ProgramError("the program takes a non-tensor input; it must take one batch tensor")
        else:
            raise ProgramError(f"the program has a {kind} input; only parameters, buffers and constants")
    if users != 1:
        raise ProgramError(f"the program takes {users} inputs; it must take exactly one batch tensor")
    _check_outputs(signature)
    return params, buffers


def _only_item(spec: Any, what: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ProgramError(f"malformed {what}")
    kind, body = next(iter(spec.items()))
    if not isinstance(body, dict):
        raise ProgramError(f"malformed {what} {kind!r}")
    return kind, body


def _require(pool: dict[str, _Payload], name: Any, what: str) -> _Payload:
    if not isinstance(name, str) or name not in pool:
        raise ProgramError(f"the program's {what} {str(name)[:80]!r} has no stored tensor")
    return pool[name]


def _check_outputs(signature: dict[str, Any]) -> None:
    kinds = [_only_item(spec, "output spec")[0] for spec in signature.get("output_specs") or []]
    if any(kind != "user_output" for kind in kinds):
        others = sorted({kind for kind in kinds if kind != "user_output"})
        raise ProgramError(
            f"the program has {', '.join(others)} outputs (it updates buffers or inputs: exported in "
            "training mode?); call model.eval() before torch.export.export"
        )
    if len(kinds) != 1:
        raise ProgramError(f"the program returns {len(kinds)} values; it must return one tensor of logits")


def _input_meta(module: dict[str, Any], tensor_values: dict[str, Any]) -> tuple[list[int | None], str]:
    """The batch input's sample shape (None for a dynamic dimension) and dtype; its first
    dimension must be dynamic."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    user = next(s["user_input"] for s in module["signature"]["input_specs"] if "user_input" in s)
    meta = tensor_values.get(user["arg"]["as_tensor"].get("name"))
    if not isinstance(meta, dict) or not meta.get("sizes"):
        raise ProgramError("the program's input is not a batch tensor (it has no dimensions)")
    sizes = meta["sizes"]
    if not isinstance(sizes[0], dict) or "as_expr" not in sizes[0]:
        raise StaticBatchError(
            f"the program's input has a fixed batch size ({sizes[0].get('as_int') if isinstance(sizes[0], dict) else '?'}); "
            'export it with a dynamic batch dimension: dynamic_shapes=({0: torch.export.Dim("batch")},)'
        )
    shape = [s.get("as_int") if isinstance(s, dict) else None for s in sizes[1:]]
    dtype = _SERIALIZE_TO_TORCH_DTYPE.get(meta.get("dtype"))
    return shape, str(dtype).removeprefix("torch.")


def _num_outputs(module: dict[str, Any], tensor_values: dict[str, Any]) -> int | None:
    """The last dimension of the logits (the class count) when it is fixed."""
    spec = module["signature"]["output_specs"][0]["user_output"]
    meta = tensor_values.get((spec.get("arg") or {}).get("as_tensor", {}).get("name"))
    sizes = meta.get("sizes") if isinstance(meta, dict) else None
    if not sizes or len(sizes) != 2:
        raise ProgramError("the program must return logits of shape [batch, classes]")
    last = sizes[-1].get("as_int") if isinstance(sizes[-1], dict) else None
    return last if type(last) is int else None


# -- loading --------------------------------------------------------------------------------------


def load_program(path: PathLike) -> torch.export.ExportedProgram:
    """The exported program of a checked archive, built with no unpickling at all.

    Raises:
        UnsafeProgramError, StaticBatchError, ProgramError: as :func:`check_program`, or the
        deserializer's refusal of the graph.
    """
    info = check_program(path)
    with _open(path) as archive:
        read = _Reader(archive, info.root, info.members)
        weights = _tensors(read, _payloads(read, _WEIGHTS_CONFIG, "weight"))
        constants = _tensors(read, _payloads(read, _CONSTANTS_CONFIG, "tensor"))
        serialized = read.bytes(_MODEL_JSON)
    return _deserialize(serialized, weights, constants)


def _tensors(read: _Reader, payloads: dict[str, _Payload]) -> dict[str, torch.Tensor]:
    """Each payload as a strided view of its record's bytes (views of one record share storage,
    as torch's loader keeps aliasing)."""
    flat: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for fqn, p in payloads.items():
        if p.record not in flat:
            data = bytearray(read.bytes(p.record, limit=2**62))
            flat[p.record] = torch.frombuffer(data, dtype=p.dtype) if data else torch.empty(0, dtype=p.dtype)
        tensor = torch.as_strided(flat[p.record], p.sizes, p.strides, p.offset) if math.prod(p.sizes) else (
            torch.zeros(p.sizes, dtype=p.dtype)
        )  # fmt: skip
        out[fqn] = nn.Parameter(tensor, requires_grad=p.requires_grad) if p.is_param else tensor
    return out


def _deserialize(
    serialized: bytes, weights: dict[str, torch.Tensor], constants: dict[str, torch.Tensor]
) -> torch.export.ExportedProgram:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass

    try:
        program = _bytes_to_dataclass(schema.ExportedProgram, serialized)
        return ExportedProgramDeserializer().deserialize(program, weights, constants, None)
    except Exception as exc:  # noqa: BLE001 (the deserializer raises many kinds; all mean "not loadable")
        raise ProgramError(
            f"the program does not deserialize: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None


# -- the module the engine edits ------------------------------------------------------------------


def program_module(program: torch.export.ExportedProgram) -> nn.Module:
    """``program.module()`` as an ordinary module: ``train()`` / ``eval()`` work (they change
    nothing: the graph was fixed at export), and the Linear / Conv layers are modules again."""
    module = program.module()
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)  # ExportedProgram.module() makes both raise
    restore_layers(module)
    return module


_LAYER_CALLS = {"linear": nn.Linear, "conv1d": nn.Conv1d, "conv2d": nn.Conv2d}


def restore_layers(module: torch.fx.GraphModule) -> list[str]:
    """Turn each ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` call whose weight (and bias)
    are the parameters of a submodule of their own, used by that call only, into a call of an
    ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` holding those same parameters. Returns the
    submodules restored."""
    restored = []
    for node in list(module.graph.nodes):
        layer = _layer_of(module, node)
        if layer is None:
            continue
        owner, built = layer
        built.to(next(module.get_submodule(owner).parameters()).device)
        module.set_submodule(owner, built, strict=False)
        with module.graph.inserting_before(node):
            call = module.graph.call_module(owner, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        attributes = node.args[1:3]
        module.graph.erase_node(node)
        for used in attributes:
            if isinstance(used, torch.fx.Node) and not used.users:
                module.graph.erase_node(used)
        restored.append(owner)
    module.graph.lint()
    module.recompile()
    return restored


def _layer_of(module: torch.fx.GraphModule, node: torch.fx.Node) -> tuple[str, nn.Module] | None:
    """The owner path and a layer module equivalent to ``node``, or None when it is not one."""
    kind = _aten_name(node)
    if kind not in _LAYER_CALLS or node.kwargs:
        return None
    args = list(node.args)
    weight, bias = args[1], args[2] if len(args) > 2 else None
    if not _own_attr(weight, "weight") or not (bias is None or _own_attr(bias, "bias")):
        return None
    assert isinstance(weight, torch.fx.Node)
    owner = str(weight.target).rsplit(".", 1)[0]
    if bias is not None and str(bias.target).rsplit(".", 1)[0] != owner:  # type: ignore[union-attr]
        return None
    sub = module.get_submodule(owner)
    expected = {"weight"} | ({"bias"} if bias is not None else set())
    if set(dict(sub.named_parameters())) != expected or [*sub.buffers(), *sub.children()]:
        return None
    built = _build_layer(kind, sub, args)
    return None if built is None else (owner, built)


def _aten_name(node: torch.fx.Node) -> str | None:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    if node.target.namespace != "aten" or node.target._overloadname != "default":
        return None
    return node.target._opname


def _own_attr(arg: Any, leaf: str) -> bool:
    return (
        isinstance(arg, torch.fx.Node)
        and arg.op == "get_attr"
        and str(arg.target).endswith(f".{leaf}")
        and len(arg.users) == 1
    )


def _build_layer(kind: str, sub: nn.Module, args: list[Any]) -> nn.Module | None:
    weight: nn.Parameter = sub.weight  # type: ignore[assignment]
    bias = getattr(sub, "bias", None)
    if kind == "linear":
        if weight.ndim != 2 or len(args) > 3:
            return None
        layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    else:
        dims = 1 if kind == "conv1d" else 2
        options = _conv_options(args[3:], dims)
        if options is None or weight.ndim != dims + 2:
            return None
        stride, padding, dilation, groups = options
        layer = _LAYER_CALLS[kind](
            weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
            padding=padding, dilation=dilation, groups=groups, bias=bias is not None, device="meta",
        )  # fmt: skip
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer


def _conv_options(rest: list[Any], dims: int) -> tuple[tuple, tuple, tuple, int] | None:
    """``stride, padding, dilation, groups`` of an ``aten.conv*d.default`` call (its defaults filled in)."""
    defaults: list[Any] = [[1] * dims, [0] * dims, [1] * dims, 1]
    *lists, groups = list(rest) + defaults[len(rest) :]
    if len(lists) != 3 or type(groups) is not int:
        return None
    if not all(isinstance(v, (list, tuple)) and all(type(x) is int for x in v) for v in lists):
        return None
    stride, padding, dilation = (tuple(v) if len(v) == dims else tuple(v) * dims for v in lists)
    return stride, padding, dilation, groups


# -- saving ---------------------------------------------------------------------------------------


def save_program(
    program: torch.export.ExportedProgram, state: dict[str, torch.Tensor], path: PathLike
) -> None:
    """Write ``program`` to ``path`` (``torch.export.save``) with its parameters and buffers
    replaced by ``state``'s tensors of the same names (the edited module's ``state_dict``).
    ``program`` keeps its own tensors (the module built from it may share them).

    Raises:
        ProgramError: ``state`` lacks one of the program's tensors or has another shape.
    """
    tensors = program.state_dict
    replaced = {}
    for name, tensor in tensors.items():
        new = state.get(name)
        if new is None or new.shape != tensor.shape:
            raise ProgramError(f"no tensor of shape {list(tensor.shape)} for {name!r} in the new weights")
        value = new.detach().to("cpu", tensor.dtype).clone()
        replaced[name] = (
            nn.Parameter(value, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else value
        )
    originals = dict(tensors)
    try:
        tensors.update(replaced)
        torch.export.save(program, os.fspath(path))
    finally:
        tensors.update(originals)
