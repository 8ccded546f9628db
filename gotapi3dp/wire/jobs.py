"""Print job states and the job record every process reports, defined once."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class JobState(str, Enum):
    QUEUED = "queued"
    AUTHENTICATING = "authenticating"
    DOWNLOADING = "downloading"
    SLICING = "slicing"
    PRINTING = "printing"
    PAUSED = "paused"
    INTERRUPTED = "interrupted"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})

_ACTIVE = (JobState.QUEUED, JobState.AUTHENTICATING, JobState.DOWNLOADING, JobState.SLICING,
           JobState.PRINTING, JobState.PAUSED, JobState.INTERRUPTED)

# Allowed transitions. Any active state may fail or be cancelled; the printer process dying
# turns an active job into INTERRUPTED.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.AUTHENTICATING}),
    JobState.AUTHENTICATING: frozenset({JobState.DOWNLOADING}),
    JobState.DOWNLOADING: frozenset({JobState.SLICING}),
    JobState.SLICING: frozenset({JobState.PRINTING}),
    JobState.PRINTING: frozenset({JobState.PAUSED, JobState.COMPLETED}),
    JobState.PAUSED: frozenset({JobState.PRINTING}),
    JobState.INTERRUPTED: frozenset({JobState.PRINTING}),
}
for _s in _ACTIVE:
    TRANSITIONS[_s] = TRANSITIONS.get(_s, frozenset()) | {JobState.FAILED, JobState.CANCELLED}
    if _s is not JobState.INTERRUPTED:
        TRANSITIONS[_s] |= {JobState.INTERRUPTED}


def can_transition(old: JobState, new: JobState) -> bool:
    return new in TRANSITIONS.get(old, frozenset())


@dataclass
class JobView:
    """The job as apps see it (`printer3d/job`, `onJobChange`).

    `layer`/`layers` is the layer printing; `sliced` the layers sliced so far (the slicer
    streams, so it runs ahead of `layer` and reaches `layers` before the print ends).
    """

    id: str
    state: str
    progress: float = 0.0
    layer: int = 0
    layers: int = 0
    sliced: int = 0
    error: dict[str, Any] | None = None
    content_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_map(self) -> dict[str, Any]:
        m = asdict(self)
        m["contentId"] = m.pop("content_id")
        m["createdAt"] = m.pop("created_at")
        m["updatedAt"] = m.pop("updated_at")
        if m["error"] is None:
            del m["error"]
        return m
