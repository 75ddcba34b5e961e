"""What an edit chooses per request: ``method="auto"`` (FIF on the classifier's head where that
forgets as well as retraining at a small fraction of its cost, else the verb's own method), and
the validation guard on ``solver="auto"`` (:func:`guarded`).

A whole class is a change of what the classifier outputs, and the logits' Linear layer (the head)
carries it: FIF restricted to the head — (H[T,T] + λI)⁻¹ g[T] over its weight and bias, then
Newton steps walked by validation — removes the class at retraining's retained accuracy on every
model measured, on features computed once (gif/tail_edit.py), at 1–10% of retraining's time
(docs/benchmarks.md, "Class removal at the defaults"). It changes what the model answers, not
what its backbone computes (bench/feature_probe.py). Samples, not a class, are remembered
throughout the network, so their removal keeps GIF.

A relabel tries the head first too (:func:`head_first`), but a head edit can fit the relabelled
samples without fixing what makes the network mislabel them (a backdoor's trigger). So it is kept
only when it took a step, :func:`accepted` accepts it, and it generalises: the same edit with a
quarter of the relabelled samples held out of the training data gets those right under their
new labels nearly as often as the ones it edited (docs/benchmarks.md, "A relabel by the head
first"). Where no head attempt is kept and the model's last two layers form a tail that runs on
its features (gif/tail_edit.py), FIF over those layers is tried next, judged the same way, its
held-out check run first (docs/benchmarks.md, "The last layers as a relabel's second attempt").
Otherwise the relabel is IF over every parameter.

``solver="auto"`` takes K-FAC where the model's curvature can be Kronecker-factored
(gif/inverse/choice.py): fitted once, it makes a relabel 3–30× cheaper than CG on CNNs, but on
some seeds its direction is worse. Unless :func:`accepted` accepts the K-FAC edit, it is redone
with the method's own solver and the one with the better validation objective kept
(docs/benchmarks.md, "A relabel default guarded by validation"): quality, not time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from . import tail_edit
from .config import ACCEPT_OBJECTIVE, EDIT_PRESETS, EditConfig
from .inputs import Inputs
from .loo_head import named_head
from .newton import VALIDATION_GIVEN, EditResult, Task

# ACCEPT_OBJECTIVE (gif/config.py, 0.98): the validation objective (F1 of the edit's two goals,
# gif/edit_sets.py) below which an edit whose ``solver="auto"`` took K-FAC is redone with the
# method's own solver, and below which a relabel of the head alone is not kept. Absolute: a bar
# relative to the F1 reachable on a request's own validation data let a head edit 2.3 points below
# retraining through ...

#: ... unless validation carved from training samples with wrong labels caps the F1 below the bar:
#: then an edit that gets the edited samples right as often as the bar asks and loses at most this
#: much of the validation accuracy it started from is accepted (:func:`accepted`;
#: docs/benchmarks.md, "Validation data with wrong labels").
VALIDATION_SLACK = 0.005

#: A relabel of the head is kept only if, with this fraction of the relabelled samples held out
#: of the training data, the same edit gets them right nearly as often as the samples it edited
#: (at most :data:`MAX_GENERALISATION_GAP` less accuracy under the new labels) ...
CHECK_FRACTION = 0.25
MAX_GENERALISATION_GAP = 0.05
#: ... which needs enough relabelled samples to hold some out; fewer go straight to the fallback.
MIN_CHECKED_SAMPLES = 20

#: Where a relabel's head edit at FIF's own damping (0.1) is not kept and the request left
#: ``damping`` to the method, the head is tried again at each of these before the fallback: a head
#: attempt costs a small fraction of IF over the network, so a second damping costs little where
#: it fails and saves most of the request where it holds
#: (docs/benchmarks.md, "A second damping for the head").
HEAD_RETRY_DAMPINGS = (0.3,)

#: Where no head attempt is kept, a relabel of a model whose last :data:`LAST_LAYERS` trainable
#: layers form a tail that runs on its features (gif/tail_edit.py, ``last_layers``) tries FIF over
#: their parameters, with the ``if`` preset's solve (:func:`last_layers_config`), before the
#: fallback: on a CNN at 28×28 it relabels within the targets at half to two thirds of IF's cost
#: over the network (its check included), and on the 8×8 digits CNN it cannot (the trigger is read
#: by earlier layers), so it gives up after its first Newton step below
#: :data:`LAST_LAYERS_GIVE_UP` (docs/benchmarks.md, "The last layers as a relabel's second
#: attempt"). It is kept as a head attempt is.
LAST_LAYERS = 2  # 0: no such attempt
LAST_LAYERS_GIVE_UP = 0.9
#: The attempt runs only where its held-out check's edit (the same edit on three quarters of the
#: samples) came within this of :data:`ACCEPT_OBJECTIVE`: the attempt's own objective lands within
#: ~0.005 of its check's (docs/benchmarks.md, "The last layers as a relabel's second attempt").
LAST_LAYERS_CHECK_SLACK = 0.01
#: Options of the last layers' attempt that differ from the ``if`` preset's solve.
LAST_LAYERS_SOLVE: dict[str, Any] = {}

#: What ``auto`` falls back to, per edit verb.
FALLBACK = {"remove": "gif", "relabel": "if"}


def choose_method(
    config: EditConfig,
    head: tuple[str, nn.Linear] | None,
    task: Task,
    *,
    lowrank_given: bool = False,
) -> tuple[EditConfig, dict | None]:
    """The configuration with a concrete method and, for ``auto``, what was chosen and why;
    ``head``: the model's :func:`~gif.loo_head.named_head` on the training inputs.

    ``auto`` becomes ``fif`` with ``selection="head"`` for the removal of a whole class, or a
    relabel of at least :data:`MIN_CHECKED_SAMPLES` samples, from a model whose logits a
    trainable Linear layer computes, unless the request names the parameters to change itself
    (``selection``, ``ratio`` or ``param_names``); else the verb's fallback (:data:`FALLBACK`).
    A relabel's head edit is tentative: the choice holds ``fallback`` (:func:`head_first`). With a
    ``lowrank`` fit given (the whole network's curvature) the edit takes the fallback at once. Any
    other method is kept, with no choice to report."""
    if config.method != "auto":
        return config, None
    fallback = FALLBACK[task.kind]
    reason = _why_not_head(config, head, task)
    if reason is None and lowrank_given:
        reason = f"a lowrank fit of the whole network was given: {fallback} over the model's parameters"
    choice: dict = {"requested": "auto"}
    if reason is None:
        chosen = head_config(config)
        if task.kind == "relabel":
            choice["fallback"] = fallback
            why = "a relabel of a model whose logits a Linear layer computes: FIF on that head, if it generalises"
        else:
            why = "a whole class removed from a model whose logits a Linear layer computes: FIF on that head"
    else:
        chosen, why = config.replace(method=fallback), reason
    return chosen, {**choice, "chosen": chosen.method, "selection": chosen.selection, "reason": why}


def head_config(config: EditConfig) -> EditConfig:
    """``config`` as FIF on the head (``selection="head"``); the head's block of the Hessian is
    small, so ``solver="auto"`` becomes FIF's own solver there."""
    return config.replace(
        method="fif", selection="head", solver=None if config.solver == "auto" else config.solver
    )


def _why_not_head(config: EditConfig, found: tuple[str, nn.Linear] | None, task: Task) -> str | None:
    if task.kind == "remove" and task.forget_class is None:
        return "a removal of samples, not of a whole class: they are remembered throughout the network"
    if task.kind == "relabel" and task.index.numel() < MIN_CHECKED_SAMPLES:
        return (
            f"fewer than {MIN_CHECKED_SAMPLES} samples relabelled: too few to check that a head edit "
            f"generalises, so {FALLBACK['relabel']} over the model's parameters"
        )
    named = [n for n in ("selection", "ratio", "param_names") if getattr(config, n) is not None]
    if named:
        return f"the request names the parameters to change ({', '.join(named)})"
    if found is None or not found[0]:
        return "no Linear layer inside the model computes its logits"
    if not all(p.requires_grad for p in found[1].parameters()):
        return "the Linear layer computing the logits is frozen"
    return None


def head_first(
    run: Callable[[EditConfig], EditResult],
    check: Callable[[EditConfig], dict],
    config: EditConfig,
    fallback: EditConfig,
    choice: dict,
    dampings: tuple[float, ...] = (),
    last_layers: EditConfig | None = None,
) -> EditResult:
    """A relabel by the head alone (``config``, :func:`guarded`), kept when it moved the head,
    :func:`accepted` accepts it, and ``check`` (gif/tail_edit.py, ``held_out_check``, run with
    the solver the edit kept) finds it generalising to held-out relabelled samples; tried at
    ``config.damping`` and then at each of ``dampings``, then (where given) by ``last_layers``
    (:func:`last_layers_config`, its check run first: :func:`_last_layers_verdict`), until one
    is kept; else the ``fallback`` edit (guarded too). The returned edit counts the work of
    every attempt and check. ``choice`` (the report's ``method_choice``) records the last
    attempt's verdict (``head_first``, its ``tier`` ``head`` or ``last_layers``, with the earlier
    ones in ``earlier``). An edit that took no step is not kept even when the model already
    predicts the new labels: its weights still carry the old ones, which the fallback's update
    takes out."""
    attempts = [("head", config.replace(damping=damping)) for damping in (config.damping, *dampings)]
    if last_layers is not None:
        attempts.append(("last_layers", last_layers))
    spent: list[dict] = []  # the work of attempts not kept, and of checks run ahead of theirs
    verdicts: list[dict] = []
    for tier, attempt in attempts:
        if tier == "last_layers":
            tried, verdict = _last_layers_verdict(run, check, attempt, spent)
        else:
            tried = guarded(run, attempt)
            verdict = {"tier": tier, **_verdict(tried, check, attempt)}
        if verdict.pop("generalises", False):
            assert tried is not None
            result, kept = tried, "fif"
            break
        if tried is not None:
            spent.append(tried.report)
        verdicts.append(verdict)
    else:  # no attempt kept: the fallback, judged by the last attempt's verdict
        result, kept, verdict = guarded(run, fallback), fallback.method, verdicts.pop()
    options = result.report["options"]
    choice.update(chosen=kept, selection=options["selection"])
    if kept == "fif" and verdict["tier"] == "last_layers":
        choice["param_names"] = list(options["param_names"])
    for other in spent:
        _add_work(result, other)
    choice["head_first"] = {**verdict, "kept": kept, **({"earlier": verdicts} if verdicts else {})}
    return result


def last_layers_config(requested: EditConfig, names: list[str]) -> EditConfig:
    """The relabel's attempt over the layers ``names`` (gif/tail_edit.py, ``last_layers``): FIF
    over every parameter of theirs, solved as the ``if`` preset solves (CG on the Gauss–Newton
    matrix, truncated; products over a subset; stopped at the bar) where the request left those
    options out, giving up after a first Newton step below :data:`LAST_LAYERS_GIVE_UP`."""
    preset = EDIT_PRESETS["if"]
    solve = ("damping", "curvature", "max_iter", "correction_tol", "hvp_samples", "stop_objective", "stall_gain")  # fmt: skip
    own = {name: preset[name] for name in solve if getattr(requested, name) is None}
    solver = preset["solver"] if requested.solver == "auto" else requested.solver
    return requested.replace(
        method="fif", selection=None, ratio=1.0, param_names=tuple(f"{name}.*" for name in names),
        solver=solver, give_up_objective=LAST_LAYERS_GIVE_UP, **{**own, **LAST_LAYERS_SOLVE},
    )  # fmt: skip


def last_layers_attempt(requested: EditConfig, model: nn.Module) -> EditConfig | None:
    """:func:`last_layers_config` over the model's last :data:`LAST_LAYERS` trainable layers, or
    None where it has fewer (or the attempt is turned off)."""
    names = tail_edit.last_layers(model, LAST_LAYERS) if LAST_LAYERS > 0 else None
    return None if names is None else last_layers_config(requested, names)


def _verdict(result: EditResult, check: Callable[[EditConfig], dict], config: EditConfig) -> dict:
    """What :func:`head_first` judged an attempt on (its ``check`` run only where the edit
    moved and :func:`accepted` accepts it, its work added to ``result``), with ``generalises``
    set where the attempt is to be kept."""
    moved = _moved(result)
    verdict: dict = {
        "damping": config.damping, **_judged(result), "threshold": ACCEPT_OBJECTIVE, "moved": moved,
    }  # fmt: skip
    if moved and verdict["accepted"]:
        work, held = _checked(check, config.replace(solver=result.report["options"]["solver"]))
        _add_work(result, work)
        verdict["held_out_check"] = held
        verdict["generalises"] = held["gap"] <= MAX_GENERALISATION_GAP
    return verdict


def _last_layers_verdict(
    run: Callable[[EditConfig], EditResult],
    check: Callable[[EditConfig], dict],
    config: EditConfig,
    spent: list[dict],
) -> tuple[EditResult | None, dict]:
    """The last layers' attempt, judged as a head attempt is but checked first: its held-out
    check — the same edit without a quarter of the relabelled samples, giving up as the attempt
    does — costs about as much as the attempt, and is what rejects it on requests the last layers
    cannot generalise (labels the network memorised wrong), so where the check's objective stays
    more than :data:`LAST_LAYERS_CHECK_SLACK` below the bar (given up, or short of it) or its gap
    exceeds :data:`MAX_GENERALISATION_GAP` the attempt is not run. The check's work goes to
    ``spent``."""
    work, held = _checked(check, config)
    spent.append(work)
    verdict: dict = {
        "tier": "last_layers", "damping": config.damping, "params": list(config.param_names or ()),
        "held_out_check": held,
    }  # fmt: skip
    if held["objective"] < ACCEPT_OBJECTIVE - LAST_LAYERS_CHECK_SLACK or held["gap"] > MAX_GENERALISATION_GAP:
        return None, {**verdict, "ran": False}
    result = guarded(run, config)
    verdict.update(_judged(result), threshold=ACCEPT_OBJECTIVE, moved=_moved(result), ran=True)
    verdict["newton_steps"] = len(result.report["newton_steps"])
    verdict["generalises"] = verdict["moved"] and verdict["accepted"] is not None
    return result, verdict


def _checked(check: Callable[[EditConfig], dict], config: EditConfig) -> tuple[dict, dict]:
    """The held-out check of ``config``: its ``work`` and ``timings`` (for :func:`_add_work`), and
    its figures with the ``gap`` between edited and held-out samples and the largest allowed."""
    held = check(config)
    work = {"work": held.pop("work"), "timings": held.pop("timings")}
    return work, {**held, "gap": held["edited"] - held["held_out"], "max_gap": MAX_GENERALISATION_GAP}


def _moved(result: EditResult) -> bool:
    return any(step["step"]["scale"] > 0 for step in result.report["newton_steps"])


def head_dampings(requested: EditConfig) -> tuple[float, ...]:
    """The dampings a relabel's head is tried at after FIF's own: :data:`HEAD_RETRY_DAMPINGS`
    where the request left ``damping`` to the method, none where it set one."""
    return HEAD_RETRY_DAMPINGS if requested.damping is None else ()


def guarded(run: Callable[[EditConfig], EditResult], config: EditConfig) -> EditResult:
    """``run(config)``; when ``solver="auto"`` took K-FAC and :func:`accepted` does not accept the
    edit, also ``run`` with the method's own solver (from the input model again) and keep the
    edit with the higher validation objective. The kept report's ``solver_choice`` says
    what was compared (``guard``); its ``work``, ``gradients`` and ``hvps`` count both runs."""
    first = run(config)
    choice = first.report.get("solver_choice")
    if config.solver != "auto" or choice is None or choice["chosen"] != "kfac":
        return first
    objective = _objective(first)
    guard: dict = {"threshold": ACCEPT_OBJECTIVE, "objectives": {"kfac": objective}}
    why = accepted(first.report)
    if why is not None:
        choice["guard"] = {**guard, "accepted_by": why, "kept": "kfac"}
        return first
    own = str(EDIT_PRESETS[config.method]["solver"])
    second = run(config.replace(solver=own))
    guard["objectives"][own] = _objective(second)
    kept, other = (second, first) if _objective(second) > objective else (first, second)
    solver = kept.report["options"]["solver"]
    kept.report["solver_choice"] = {**choice, "chosen": solver, "guard": {**guard, "kept": solver}}
    _add_work(kept, other.report)
    return kept


def most_runs(
    requested: EditConfig, chosen: EditConfig, choice: dict | None, *, last_layers: bool = False
) -> int:
    """How many edits a request may run, for its progress (``attempt`` of ``attempts``): two
    where :func:`guarded` may redo a ``solver="auto"`` edit; a relabel's head attempts (FIF's own
    solver: one run per damping, :func:`head_dampings`) and its ``last_layers`` attempt (where it
    has one) before its fallback (with the requested solver), as in :func:`head_first`."""
    if choice is not None and "fallback" in choice:
        tried = 1 + len(head_dampings(requested)) + int(last_layers)
        return tried + (2 if requested.solver == "auto" else 1)
    return 2 if chosen.solver == "auto" else 1


def most_hessian_samples(config: EditConfig, kind: str) -> int:
    """The most samples the whole network's Hessian takes in an edit of ``kind`` (``remove`` |
    ``relabel``) under ``config``, for sizing a job before it runs: the method's own, and for
    ``auto`` its fallback's (:data:`FALLBACK`) — the head edit it may try first runs on the head's
    features, whose Hessian data is a feature matrix, not the network's inputs."""
    if config.method != "auto" or config.hessian_samples is not None:
        return config.hessian_size
    return int(EDIT_PRESETS[FALLBACK[kind]]["hessian_samples"])


def most_feature_bytes(model: nn.Module, inputs: Inputs, n: int, config: EditConfig, kind: str) -> int:
    """The most bytes of features (gif/tail_edit.py) an edit of ``kind`` under ``config`` on
    ``n`` samples like ``inputs`` may hold at once, for sizing a job before it runs: with
    ``auto``, the head's and, for a relabel, the last layers' (a request keeps every set it
    computed), else those of the method's own tail — each where the engine would take it."""
    found = named_head(model, inputs)
    attempts = [config]
    if config.method == "auto":
        attempts = [head_config(config)]
        last = last_layers_attempt(config, model) if kind == "relabel" else None
        if last is not None:
            attempts.append(last)
    tails = {}
    for attempt in attempts:
        tail = tail_edit.frozen_tail(model, found, attempt, whole_network=False)
        if tail is not None:
            tails[tail.path, tail.flatten] = tail
    held = [(tail, tail_edit.feature_bytes(tail, model, inputs, n)) for tail in tails.values()]
    return sum(size for tail, size in held if tail.flatten or size <= tail_edit.TAIL_FEATURE_BYTES)


def _add_work(result: EditResult, other: dict) -> None:
    """Count another run's ``work`` and ``timings`` (``other``: its report, or the held-out
    check's figures) in ``result``'s report: they say what the whole request cost and where its
    time went. The head's features are computed once per request, so their time counts once."""
    report = result.report
    work, timings = report["work"], report["timings"]
    for name, count in other["work"].items():
        work[name] += count
    report["gradients"], report["hvps"] = work["gradients"], work["hvps"]
    for stage, seconds in other["timings"].items():
        before = timings.get(stage, 0.0)
        timings[stage] = round(max(before, seconds) if stage == "features" else before + seconds, 4)


def _objective(result: EditResult) -> float:
    return float(result.report["metrics"]["after"]["objective"])


def accepted(report: dict) -> str | None:
    """Why an edit with this ``report`` (its ``metrics`` before and after the edit,
    gif/edit_sets.py) is good enough to keep — ``"objective"`` (it reaches
    :data:`ACCEPT_OBJECTIVE`) or ``"edited samples, validation kept"`` (a relabel judged on
    validation carved from its training data whose edited samples reach the bar under their new
    labels while the validation accuracy stays within :data:`VALIDATION_SLACK` of its value
    before the edit) — or None. Validation the request gave is held-out data: there the
    model's errors are its generalisation error, not labels it could not fit, and an edit
    judged on it takes the objective alone (docs/benchmarks.md, "Validation data with wrong
    labels")."""
    metrics = report["metrics"]
    after = metrics["after"]
    if after["objective"] >= ACCEPT_OBJECTIVE:
        return "objective"
    if "edited_new_labels" not in after or report.get("validation_source") == VALIDATION_GIVEN:
        return None
    edited = after["edited_new_labels"]["accuracy"]
    before = metrics["before"]["validation"]["accuracy"]
    kept = after["validation"]["accuracy"] >= before - VALIDATION_SLACK
    return "edited samples, validation kept" if edited >= ACCEPT_OBJECTIVE and kept else None


def _judged(result: EditResult) -> dict:
    """The figures :func:`accepted` judged ``result`` on, and its verdict."""
    metrics = result.report["metrics"]
    figures: dict = {"objective": _objective(result), "accepted": accepted(result.report)}
    if "edited_new_labels" in metrics["after"]:
        figures["edited"] = metrics["after"]["edited_new_labels"]["accuracy"]
        figures["validation"] = [metrics[k]["validation"]["accuracy"] for k in ("before", "after")]
    return figures
