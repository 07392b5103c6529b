"""CA rotation: the phases of one rotation and what to do in each. Pure: time passed in.

A rotation replaces the gateway's CA, its server key and certificate and the interception
CA, without a sandbox losing a clone:

1. **prepared**: the next CA exists; the gateway still shows its current server certificate
   but already accepts client certificates of the next CA and issues with it. Every live
   session gets a new certificate for its same key; the host side writes bundles that trust
   both CAs and pin both server keys.
2. **overlap** (after *commit*): the next identity is the current one (new connections see
   the new server certificate, API interception the new CA); client certificates of the old
   CA and every session's previous certificate are still accepted until ``overlap_until``.
3. **idle** again when the overlap ends (a gateway timer, and at start-up when it has
   passed): only the new CA and each session's new certificate are accepted.

The state is a small JSON file in the state directory, so a restart keeps the phase and the
deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MIN_OVERLAP = 1.0
MAX_OVERLAP = 7 * 24 * 3600.0


class Phase(StrEnum):
    IDLE = "idle"
    PREPARED = "prepared"
    OVERLAP = "overlap"


@dataclass(frozen=True)
class RotationState:
    phase: Phase = Phase.IDLE
    overlap: float = 0.0  # seconds, as asked for at prepare
    prepared_at: float | None = None
    overlap_until: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "overlap": self.overlap,
            "prepared_at": self.prepared_at,
            "overlap_until": self.overlap_until,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> RotationState:
        until = d.get("overlap_until")
        prepared = d.get("prepared_at")
        return RotationState(
            phase=Phase(d.get("phase", "idle")),
            overlap=float(d.get("overlap", 0.0)),
            prepared_at=float(prepared) if prepared is not None else None,
            overlap_until=float(until) if until is not None else None,
        )


class StartAction(StrEnum):
    NOTHING = "nothing"
    COMPLETE_COMMIT = "complete_commit"  # a commit was cut short: finish moving the files
    FINISH = "finish"  # the overlap has ended while the gateway was down
    WAIT = "wait"  # the overlap is still running: schedule its end


def prepare_refusal(state: RotationState, overlap: float, now: float) -> str | None:
    """Why a rotation may not be prepared now, or None (a prepared one may be prepared
    again: the same next CA, for a host side that stopped before it committed)."""
    if not MIN_OVERLAP <= overlap <= MAX_OVERLAP:
        return f"overlap must be between {MIN_OVERLAP:g} s and {MAX_OVERLAP:g} s"
    if state.phase is Phase.OVERLAP and not overlap_ended(state, now):
        assert state.overlap_until is not None
        left = state.overlap_until - now
        return (
            f"the previous rotation's overlap is still running ({left:.0f} s left); "
            "run `airlock rotate ca` again after it ends"
        )
    return None


def prepared(state: RotationState, overlap: float, now: float) -> RotationState:
    if state.phase is Phase.PREPARED and state.prepared_at is not None:
        return RotationState(Phase.PREPARED, overlap, state.prepared_at, None)
    return RotationState(Phase.PREPARED, overlap, now, None)


def commit_refusal(state: RotationState) -> str | None:
    if state.phase is not Phase.PREPARED:
        return "no prepared rotation to commit; run `airlock rotate ca`"
    return None


def committed(state: RotationState, now: float) -> RotationState:
    """The state after the commit: the overlap runs from now."""
    return RotationState(Phase.OVERLAP, state.overlap, state.prepared_at, now + state.overlap)


def overlap_ended(state: RotationState, now: float) -> bool:
    return (
        state.phase is Phase.OVERLAP
        and state.overlap_until is not None
        and now >= state.overlap_until
    )


def on_start(state: RotationState, now: float, next_files_present: bool) -> StartAction:
    """What a starting gateway does about the rotation it finds."""
    if state.phase is Phase.OVERLAP and next_files_present:
        return StartAction.COMPLETE_COMMIT
    if state.phase is Phase.OVERLAP:
        return StartAction.FINISH if overlap_ended(state, now) else StartAction.WAIT
    return StartAction.NOTHING


def previous_cert_deadline(state: RotationState, session_expires_at: float) -> float:
    """Until when a session's certificate replaced in this rotation is still accepted.

    While prepared there is no deadline but the session's own end: the previous certificate
    is the one every bundle not yet rewritten holds, and the old CA is still the current
    one, however long the commit takes (`rotate ca` failed, was interrupted, or is re-run
    much later). The commit sets the real end: the end of the overlap."""
    if state.phase is Phase.OVERLAP and state.overlap_until is not None:
        return min(state.overlap_until, session_expires_at)
    return session_expires_at
