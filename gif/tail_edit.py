"""An edit of a model's tail — its last layers — run on the tail's input features computed once.

When everything an edit may change lies in the tail and the edit's solve involves only the
tail's block of the Hessian, the rest of the network is a fixed function of each sample: the edit
is the same computation on a model that *is* the tail, fed the features the network computes for
it. One forward pass over the data replaces a forward pass of the whole network per HVP,
gradient and step-search evaluation. The tail is

* the Linear layer that computes the logits (the head), fed its input flattened to [n, d]; or
* the last children of an ``nn.Sequential`` model (its own ``forward``), from the first child
  holding a parameter the edit needs, fed that child's input as computed — where a child
  before it has parameters (layers of its own to skip); or
* for a model with a ``forward`` of its own, what its ``torch.fx`` trace computes from the input
  of the first module holding a needed parameter, where that input is all the rest reads of
  what came before (``_traced_tail``; a model that cannot be traced keeps the whole network),

and the edit needs only the tail's block when

* every trainable parameter lies in the tail (the rest frozen, ``requires_grad=False``), for
  any method; or
* the method is ``fif`` and T lies in the tail (``selection="head"``, or ``param_names``
  naming only parameters there): FIF solves (H[T,T] + λI)⁻¹ g[T] and moves only T, so it never
  needs the Hessian's other rows.

``if`` and ``gif`` with ``param_names`` on the tail still use H's rows over every trainable
parameter (docs/method.md), so they keep the whole network, as does an edit given a ``lowrank``
fit (it belongs to the whole network). An audit ``reference`` model is a whole network too: with
one, the audit runs on the whole input and edited models after the edit. With a cache the features
are an entry of it (kind ``features``: the whole model's digest, the data's, the layer), so a
further edit of the same checkpoint and data runs no forward pass of the network. The edited copy
is the input model with the tail's new weights; ``delta`` and ``params`` are over the whole model's
parameters, as for any edit; the report says the shortcut was taken (``head_features``, with the
tail's ``modules``).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import time

import torch
from torch import fx, nn

from ._util import eval_mode
from .audit import audit_sets, run_audit
from .cache import Memo
from .config import EDIT_PRESETS, EditConfig
from .data import Batch, as_pair
from .hessian import Work
from .inputs import Inputs, take
from .inverse import choose_solver
from .loo_head import feature_chunks, head_parameter_names
from .metrics import evaluate
from .models.zoo import trainable_layers
from .newton import AuditInputs, Edit, EditResult, Request
from .params import ParamSpace

#: Samples per forward pass of the whole network when computing the features (no graph is kept,
#: so the pass holds one chunk's activations at a time; the edit's own chunk size is for the tail).
FEATURE_CHUNK = 256

#: The features of every sample of a request are held in memory: a tail of an ``nn.Sequential``
#: whose features would take more than this runs on the whole network instead.
TAIL_FEATURE_BYTES = 1 << 30


@dataclasses.dataclass
class Tail:
    """The part of a model an edit runs on alone: the modules ``names`` (named as in the model)
    applied to the features — the input of the module ``path``, flattened to [n, d] for the head —
    in order, or as the traced ``graph`` (a ``torch.fx`` graph whose one placeholder is the
    features) computes them."""

    path: str
    names: list[str]
    flatten: bool
    graph: fx.Graph | None = None

    def of(self, model: nn.Module) -> nn.Module:
        """The tail as a module of its own over ``model``'s modules (shared, not copied), its
        parameters named as in the model."""
        if self.graph is not None:
            return fx.GraphModule(model, self.graph)
        return _Surrogate([(name, model.get_submodule(name)) for name in self.names])


def frozen_tail(
    model: nn.Module, found: tuple[str, nn.Linear] | None, config: EditConfig, *, whole_network: bool
) -> Tail | None:
    """The tail an edit can run on alone (module docstring), or None; ``found``: the model's
    :func:`~gif.loo_head.named_head`. ``whole_network``: the edit was given something that belongs
    to the whole network (a ``lowrank`` fit, a reference)."""
    if whole_network:
        return None
    needed = _needed(model, found, config)
    if not needed:
        return None
    if found is not None and found[0] and needed <= head_parameter_names(*found):
        return Tail(found[0], [found[0]], flatten=True)
    if needed >= {name for name, _ in model.named_parameters()}:
        return None  # nothing before the tail to skip
    if type(model).forward is not nn.Sequential.forward:
        return _traced_tail(model, needed)
    children = list(model.named_children())
    holding = [i for i, (name, _) in enumerate(children) if any(n.split(".")[0] == name for n in needed)]
    first = holding[0] if holding else 0
    skipped = any(True for _, child in children[:first] for _ in child.parameters())
    # children before the first with parameters (a Flatten, say) cost next to nothing to rerun
    names = [name for name, _ in children[first:]]
    return Tail(names[0], names, flatten=False) if skipped else None


def _traced_tail(model: nn.Module, needed: set[str]) -> Tail | None:
    """The tail of a model with a ``forward`` of its own, from its ``torch.fx`` trace: everything
    computed from the input of the first module holding a needed parameter (the cut), where the
    cut is the only value that crosses — nothing after it reads the model's inputs or anything
    else computed before it (a residual's skip from before the cut, say) — that module is called
    once, every module holding a needed parameter is called after it, and the part before holds
    parameters of its own. None where any of that fails, or the model cannot be traced."""
    graph = _trace(model)
    if graph is None:
        return None
    holders = {name.rpartition(".")[0] for name in needed}
    calls = [node for node in graph.nodes if node.op == "call_module"]
    first = next((node for node in calls if node.target in holders), None)
    if first is None or len(first.args) != 1 or first.kwargs or not isinstance(first.args[0], fx.Node):
        return None
    cut: fx.Node = first.args[0]
    after: set[fx.Node] = set()  # everything computed from the cut
    for node in graph.nodes:
        if any(arg is cut or arg in after for arg in node.all_input_nodes):
            after.add(node)
    crossing = any(arg is not cut and arg not in after and arg.op != "get_attr"
                   for node in after for arg in node.all_input_nodes)  # fmt: skip
    called = {node.target for node in calls if node in after}
    before = [node.target for node in calls if node not in after]
    if (
        crossing
        or not any(node.op == "output" for node in after)
        or not holders <= called
        or holders & set(before)
        or sum(node.target == first.target for node in calls) != 1
        or not any(True for target in before for _ in model.get_submodule(str(target)).parameters())
    ):
        return None
    names = list(dict.fromkeys(str(node.target) for node in calls if node in after))
    return Tail(str(first.target), names, flatten=False, graph=_graph_after(graph, cut, after))


def _trace(model: nn.Module) -> fx.Graph | None:
    """The model's ``torch.fx`` graph, traced in eval mode (a ``self.training`` the forward reads
    is fixed at trace time), or None where it cannot be traced."""
    try:
        with eval_mode(model):
            return fx.Tracer().trace(model)
    except Exception:  # noqa: BLE001 — whatever stops the tracer, the model keeps the whole network
        return None


def _graph_after(graph: fx.Graph, cut: fx.Node, after: set[fx.Node]) -> fx.Graph:
    """The nodes of ``after`` (and the attributes they read) as a graph of their own, whose one
    input is the value of ``cut``."""
    tail = fx.Graph()
    env = {cut: tail.placeholder("features")}
    for node in graph.nodes:
        if node in after or (node.op == "get_attr" and any(user in after for user in node.users)):
            env[node] = tail.node_copy(node, lambda arg: env[arg])
    return tail


def last_layers(model: nn.Module, count: int) -> list[str] | None:
    """The names of the model's last ``count`` Conv1d, Conv2d and Linear layers with a trainable
    parameter (:func:`gif.models.zoo.trainable_layers` order), or None where it has fewer."""
    layers = [
        name for name, layer in trainable_layers(model) if any(p.requires_grad for p in layer.parameters())
    ]
    return layers[-count:] if len(layers) >= count else None


def tail_key(config: EditConfig) -> tuple:
    """What of ``config`` :func:`frozen_tail` reads (through :func:`_needed`): a request may keep
    the tail it found under it, whichever of its edits asks again."""
    return config.method, config.selection, config.param_names


def _needed(model: nn.Module, found: tuple[str, nn.Linear] | None, config: EditConfig) -> set[str]:
    """The trainable parameters whose rows of the Hessian the edit's solve involves: T's
    candidates for ``fif`` (named by ``param_names``, or the head's for ``selection="head"``),
    every trainable parameter otherwise."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if config.method != "fif":
        return trainable
    if config.param_names is not None:
        return {n for n in trainable if any(fnmatch.fnmatchcase(n, p) for p in config.param_names)}
    if config.selection == "head" and found is not None and found[0]:
        return head_parameter_names(*found) & trainable
    return trainable


def fits(tail: Tail, request: Request) -> bool:
    """Whether the tail's features (:func:`feature_bytes`) stay within :data:`TAIL_FEATURE_BYTES`;
    the head's always do."""
    if tail.flatten:
        return True
    return feature_bytes(tail, request.model, request.train[0], len(request.train[1])) <= TAIL_FEATURE_BYTES


def feature_bytes(tail: Tail, model: nn.Module, inputs: Inputs, n: int) -> int:
    """The bytes the tail's features take for ``n`` samples like ``inputs``, and as much again
    for validation and holdout data (one sample is run through the network to size them)."""
    device = next(model.parameters()).device
    first = model.get_submodule(tail.path)
    one = next(feature_chunks(model, first, take(inputs, slice(0, 1)), 1, device, flatten=tail.flatten))
    return 2 * one.numel() * one.element_size() * n


@dataclasses.dataclass
class Features:
    """The tail's inputs for one request, computed once: for the training data, the validation
    data and the audit's holdout (each given or None), with the seconds it took and what the
    cache served."""

    tail: Tail
    train: torch.Tensor
    validation: Batch | None
    holdout: Batch | None
    seconds: float
    cache: dict


def features(tail: Tail, request: Request, config: EditConfig) -> Features:
    """One forward pass of the whole network over each set, stopped at the tail's input (with a
    cache: an entry per set, kind ``features``)."""
    start = time.perf_counter()
    model = request.model
    device = next(model.parameters()).device
    memo = Memo(request.cache)
    whole = memo.model(model)
    first = model.get_submodule(tail.path)
    chunk = min(config.chunk_size, FEATURE_CHUNK)

    def of(inputs: Inputs) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return torch.cat(list(feature_chunks(model, first, inputs, chunk, device, flatten=tail.flatten)))

        # the head's entries keep the key they had before tails of a Sequential (flattened features)
        shape = {} if tail.flatten else {"flatten": False}
        key = {"model": whole, "data": memo.data(inputs), "layer": tail.path, **shape}
        return memo.tensor("features", key, compute, device=device)

    def pair(data: Batch | None) -> Batch | None:
        return None if data is None else (of(data[0]), data[1])

    train = of(request.train[0])
    validation = pair(None if request.validation is None else as_pair(request.validation, what="validation"))
    holdout = pair(request.audit.holdout)
    return Features(tail, train, validation, holdout, time.perf_counter() - start, memo.report())


def run(feats: Features, request: Request, config: EditConfig) -> EditResult:
    """The edit of the tail on its features; the result as for the whole model."""
    model, tail = request.model, feats.tail
    config, choice = choose_solver(config, model, request.loss_fn, EDIT_PRESETS[config.method]["solver"])
    surrogate = copy.deepcopy(tail.of(model))
    result = Edit(_on_features(feats, request, surrogate), config).run()
    edited = copy.deepcopy(model)
    loaded = edited.load_state_dict(result.model.state_dict(), strict=False)  # the tail's entries alone
    assert not loaded.unexpected_keys, f"the tail's names are not the model's: {loaded.unexpected_keys}"
    delta, params = _in_whole_model(model, surrogate, result)
    report = result.report
    audit = request.audit
    if audit.reference is not None:  # on the inputs themselves: the reference computes its own features
        spent = Work()
        sets = audit_sets(request.train, request.task.index, audit.holdout, seed=config.seed)
        report["audit"] = run_audit(model, edited, sets, audit.reference, spent, config.chunk_size)
        report["work"]["forward_evaluations"] += spent.forward_evaluations
    if choice is not None:
        report["solver_choice"] = choice
    report["head_features"] = {
        "layer": tail.path, "modules": tail.names, "features": int(feats.train[0].numel()),
        "seconds": round(feats.seconds, 4), "cache": feats.cache,
    }  # fmt: skip
    report["timings"]["features"] = round(feats.seconds, 4)
    return EditResult(edited, delta, params, report)


def held_out_check(feats: Features, request: Request, config: EditConfig, fraction: float) -> dict:
    """Does a relabel of the tail generalise to relabelled samples it did not see?

    A seeded ``fraction`` of the relabelled samples is held out — dropped from the training
    data altogether, so that their old labels do not pull against the edit — and the same edit
    is run on the rest. Returned: the accuracy under the new labels of the samples the check
    edited (``edited``) and of the held-out ones (``held_out``), their counts, the check's edit's
    validation ``objective`` and ``newton_steps``, its ``work`` and ``timings``."""
    task = request.task
    assert task.kind == "relabel" and task.new_labels is not None
    n, k = len(request.train[1]), task.index.numel()
    order = torch.randperm(k, generator=torch.Generator().manual_seed(config.seed))
    held = torch.sort(order[: max(1, round(fraction * k))]).values
    kept = torch.sort(order[held.numel() :]).values
    keep_rows = torch.ones(n, dtype=torch.bool)
    keep_rows[task.index[held]] = False
    position = torch.cumsum(keep_rows, 0) - 1  # row of each kept sample in the reduced data
    index = position[task.index[kept]]
    reduced = dataclasses.replace(feats, train=feats.train[keep_rows.to(feats.train.device)], holdout=None)
    # the check runs on features only (no audit): its request carries them, not a copy of the inputs
    train = (reduced.train, request.train[1][keep_rows])
    sub = dataclasses.replace(
        task, index=index, target=(take(task.target[0], kept), task.target[1][kept]),
        scale=index.numel() / (n - held.numel()), new_labels=task.new_labels[kept],
    )  # fmt: skip
    check = run(reduced, dataclasses.replace(request, train=train, task=sub, callback=None, audit=AuditInputs()),
                config)  # fmt: skip
    edited_tail = feats.tail.of(check.model)
    new = task.new_labels.to(feats.train.device)
    rows = task.index.to(feats.train.device)

    def accuracy(part: torch.Tensor) -> float:
        return evaluate(edited_tail, feats.train[rows[part]], new[part], loss_fn=request.loss_fn).accuracy

    return {
        "edited": accuracy(kept), "held_out": accuracy(held), "samples": [kept.numel(), held.numel()],
        "objective": float(check.report["metrics"]["after"]["objective"]),
        "newton_steps": len(check.report["newton_steps"]),
        "work": check.report["work"], "timings": check.report["timings"],
    }  # fmt: skip


def _on_features(feats: Features, request: Request, surrogate: nn.Module) -> Request:
    """The request as the surrogate sees it: features in place of inputs."""
    task = request.task
    return dataclasses.replace(
        request,
        model=surrogate,
        train=(feats.train, request.train[1]),
        task=dataclasses.replace(task, target=(take(feats.train, task.index), task.target[1])),
        validation=feats.validation,
        lowrank=None,
        audit=AuditInputs(holdout=feats.holdout),
    )


class _Surrogate(nn.Module):
    """The tail alone, each module registered under its name in the model, so that parameter
    names (and ``param_names`` patterns, cache entries, reports) read as in the whole model."""

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for path, module in modules:
            *parents, leaf = path.split(".")
            node: nn.Module = self
            for name in parents:
                if not hasattr(node, name):
                    node.add_module(name, nn.Module())
                node = node.get_submodule(name)
            node.add_module(leaf, module)
        self.order = [path for path, _ in modules]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for path in self.order:
            features = self.get_submodule(path)(features)
        return features


def _in_whole_model(
    model: nn.Module, surrogate: nn.Module, result: EditResult
) -> tuple[torch.Tensor, torch.Tensor]:
    """``delta`` and ``params`` of the surrogate's edit, over the whole model's parameter vector."""
    whole, part = ParamSpace(model), ParamSpace(surrogate)
    where = torch.cat([whole.slot(s.name).offset + torch.arange(s.numel) for s in part.slots])
    delta = torch.zeros(whole.size, dtype=result.delta.dtype, device=result.delta.device)
    delta[where.to(delta.device)] = result.delta
    return delta, torch.sort(where[result.params.cpu()]).values
