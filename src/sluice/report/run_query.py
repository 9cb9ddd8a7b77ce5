"""Finding flow runs: by flow, state and time, and by a prefix of their id (``run ls`` and
``run show 6970ff67``, the dashboard's runs list and run pages).

The run history answers the newest runs in order; a filter reads it newest first, in
growing pages, until it has enough matches or the runs are older than ``since``. An id
prefix is looked for among every run the history keeps (``SLUICE_HISTORY_KEEP``, 1,000
by default).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sluice import runs
from sluice.errors import InvalidRequest, RunNotFound
from sluice.store.history import FlowRunRecord

__all__ = [
    "MIN_PREFIX",
    "RUN_STATES",
    "AmbiguousRunId",
    "RunFilter",
    "find_runs",
    "resolve_run_id",
]

MIN_PREFIX = 4
"""The fewest hex characters an id prefix may have."""

RUN_STATES = (
    "Pending",
    "Running",
    "Retrying",
    "Completed",
    "Failed",
    "Crashed",
    "Cancelled",
    "TimedOut",
)
"""The states a flow run can be in, as ``state`` names them."""

_HEX = re.compile(r"[0-9a-f]+")
_FIRST_PAGE = 100


class AmbiguousRunId(RunNotFound):
    """An id prefix that several flow runs' ids start with."""

    def __init__(self, prefix: str, candidates: Sequence[FlowRunRecord] = ()) -> None:
        self.prefix = prefix
        self.candidates = list(candidates)
        super().__init__(prefix)
        listed = ", ".join(f"{r.id} ({r.flow})" for r in self.candidates[:10])
        more = len(self.candidates) - 10
        self.args = (
            f"{len(self.candidates)} flow runs have ids starting with {prefix!r}: {listed}"
            + (f" and {more} more" if more > 0 else "")
            + "; give more of the id",
        )

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.prefix, self.candidates))


def _state(name: str) -> str:
    for state in RUN_STATES:
        if state.lower() == name.strip().lower():
            return state
    raise InvalidRequest(f"unknown state {name!r}: use one of {', '.join(RUN_STATES)}")


@dataclass(frozen=True)
class RunFilter:
    """Which flow runs to list: every condition given must hold."""

    flow: str | None = None
    """The flow's name, exactly."""
    states: tuple[str, ...] = ()
    """Any of these states (names as in :data:`RUN_STATES`, any case)."""
    since: float | None = None
    """Created at or after (seconds since the epoch)."""
    until: float | None = None
    """Created at or before."""
    id_prefix: str | None = None
    """The id starts with it (lowercase hex)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", tuple(_state(s) for s in self.states))
        if self.id_prefix is not None:
            prefix = self.id_prefix.strip().lower()
            if not _HEX.fullmatch(prefix):
                raise InvalidRequest(
                    f"id prefix {self.id_prefix!r} is not hexadecimal: run ids are 32 hex digits"
                )
            object.__setattr__(self, "id_prefix", prefix)

    def matches(self, run: FlowRunRecord) -> bool:
        """Whether a flow run passes every condition."""
        return (
            (self.flow is None or run.flow == self.flow)
            and (not self.states or run.state in self.states)
            and (self.since is None or run.created_at >= self.since)
            and (self.until is None or run.created_at <= self.until)
            and (self.id_prefix is None or run.id.startswith(self.id_prefix))
        )

    @property
    def empty(self) -> bool:
        """Whether it lets every run through."""
        return self == RunFilter()


def _newest_first(url: str | None) -> Iterator[FlowRunRecord]:
    """Every flow run the history keeps, newest first, read in growing pages."""
    page, seen = _FIRST_PAGE, 0
    while True:
        batch = runs.list(page, url=url)
        yield from batch[seen:]
        if len(batch) < page:
            return
        seen, page = len(batch), page * 4


def find_runs(
    count: int, where: RunFilter | None = None, *, url: str | None = None
) -> list[FlowRunRecord]:
    """The newest ``count`` flow runs that pass ``where``, newest first."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidRequest(f"count must be an int >= 1, got {count!r}")
    if where is None or where.empty:
        return runs.list(count, url=url)
    found = []
    for run in _newest_first(url):
        if where.since is not None and run.created_at < where.since:
            break  # newest first: every later one is older still
        if where.matches(run):
            found.append(run)
            if len(found) == count:
                break
    return found


def resolve_run_id(text: str, *, url: str | None = None) -> str:
    """The id of the one flow run whose id is ``text`` or starts with it (at least
    :data:`MIN_PREFIX` hex digits); RunNotFound if none, AmbiguousRunId if several."""
    given = text.strip()
    try:
        return runs.get(given, url=url).run.id
    except RunNotFound:
        pass
    prefix = given.lower()
    if len(prefix) < MIN_PREFIX or not _HEX.fullmatch(prefix):
        raise RunNotFound(given)
    matches = [r for r in _newest_first(url) if r.id.startswith(prefix)]
    if not matches:
        raise RunNotFound(given)
    if len(matches) > 1:
        raise AmbiguousRunId(given, matches)
    return matches[0].id
