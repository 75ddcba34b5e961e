"""Typed progress events: what the engine tells a ``callback`` while it works.

Every long computation (:func:`gif.influence`, :func:`gif.scores`, :func:`gif.remove`, ...)
calls its ``callback`` with :class:`Progress` events; fields that mean nothing at a stage are None.

This module imports nothing but the standard library, so the service can read it without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

Stage = Literal[
    "selecting_parameters",  # choosing T on the edited samples
    "computing_gradients",  # the edited objective's gradient at a Newton step (``newton_step``)
    "fitting_curvature",  # Lanczos iterations of a lowrank fit
    "solving",  # an iterative solve of influence / scores (``query`` or ``sample`` for scores)
    "solving_ihvp",  # an edit's influence solve at a Newton step
    "second_order",  # the second solve of ``sif``
    "step_search",  # one evaluated step scale (``scale``, ``objective``)
    "scoring",  # one training chunk of a scores pass
    "auditing",  # an edit's forgetting audit (gif/audit.py)
    "done",
]
STAGES: tuple[str, ...] = get_args(Stage)


@dataclass(frozen=True)
class Progress:
    """One progress event.

    Attributes:
        stage: what is running (:data:`STAGES`).
        iteration, max_iter: position within the stage (solver iteration, step-search point,
            training chunk) and its cap, when the stage counts.
        residual: the solver's relative residual after ``iteration``.
        newton_step: the edit's outer Newton step (1-based), at ``computing_gradients``.
        query, num_queries: which query's solve this is (scores; 0-based).
        sample, num_samples: which training sample's solve (exact self-influence; 0-based).
        scale, objective: the step scale tried and its validation objective (``step_search``).
        attempt, attempts: which run of the edit this is (1-based) and the most runs it may make,
            when more than one (gif/method_choice.py); each run starts its Newton steps again.
    """

    stage: Stage
    iteration: int | None = None
    max_iter: int | None = None
    residual: float | None = None
    newton_step: int | None = None
    query: int | None = None
    num_queries: int | None = None
    sample: int | None = None
    num_samples: int | None = None
    scale: float | None = None
    objective: float | None = None
    attempt: int | None = None
    attempts: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, JSON-ready."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def within(self) -> float:
        """Fraction of the stage done, in [0, 1] (0 when the stage does not count)."""
        if self.iteration is None or not self.max_iter:
            return 0.0
        return min(1.0, max(0.0, self.iteration / self.max_iter))


ProgressCallback = Callable[[Progress], None]
StopCheck = Callable[[], bool]

__all__ = ["STAGES", "Progress", "ProgressCallback", "Stage", "StopCheck"]
