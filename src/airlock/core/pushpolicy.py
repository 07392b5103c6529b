"""The push decision: what each command of a push may do under a write grant's ref rules.

Pure: the commands, the rules, the refs the session created and the caps go in; an explicit
decision comes out, one verdict per command. A push is all or nothing: when any command is
refused, every command is refused (the others with a message saying so), and nothing goes
upstream. A verdict of ``NEEDS_FAST_FORWARD`` is settled by :func:`settle` once the pushed
commits have been read (core/packfile.py).

The rules, for a command (old, new, ref):

- ``ref`` matches no rule: refused;
- create (old is zero): allowed;
- update or delete of a ref this session created: allowed (force-pushing its own branch);
- delete of a ref it did not create: refused;
- update of a ref it did not create: only under an ``ff:`` rule, and only as a
  fast-forward proven from the pushed commits; otherwise refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from airlock.core.pktline import RefUpdate
from airlock.core.refrules import BRANCH_PREFIX, RefRule

__all__ = [
    "PushDecision",
    "RefDecision",
    "Verdict",
    "decide_push",
    "policy_digest",
    "settle",
]


class Verdict(StrEnum):
    ALLOW = "allow"
    NEEDS_FAST_FORWARD = "needs_fast_forward"
    REFUSE = "refuse"


@dataclass(frozen=True)
class RefDecision:
    update: RefUpdate
    verdict: Verdict
    rule: str  # the rule that allowed it, or the refusal's code
    message: str = ""  # for a refusal: what git prints after "[remote rejected]"

    def audit(self) -> dict[str, str]:
        u = self.update
        return {
            "ref": u.ref,
            "old": u.old,
            "new": u.new,
            "verdict": self.verdict.value,
            "rule": self.rule,
        }


@dataclass(frozen=True)
class PushDecision:
    refs: tuple[RefDecision, ...]
    refused_whole: str | None = None  # a refusal of the push as such (cap, push cert)

    @property
    def refused(self) -> bool:
        return self.refused_whole is not None or any(r.verdict is Verdict.REFUSE for r in self.refs)

    @property
    def pending(self) -> tuple[RefDecision, ...]:
        """Updates waiting for their fast-forward proof."""
        return tuple(r for r in self.refs if r.verdict is Verdict.NEEDS_FAST_FORWARD)


def short_ref(ref: str) -> str:
    return ref.removeprefix(BRANCH_PREFIX) if ref.startswith(BRANCH_PREFIX) else ref


def _describe(rules: Sequence[RefRule]) -> str:
    return ",".join(str(r) for r in rules) if rules else "none"


def _decide_one(update: RefUpdate, rules: Sequence[RefRule], owned: frozenset[str]) -> RefDecision:
    name = short_ref(update.ref)
    matching = [r for r in rules if r.matches(update.ref)]
    if not matching:
        return RefDecision(
            update,
            Verdict.REFUSE,
            "outside_rules",
            f"airlock: {name} is outside this session's branches {_describe(rules)}",
        )
    rule = str(matching[0])
    if update.is_create:
        return RefDecision(update, Verdict.ALLOW, rule)
    if update.ref in owned:
        return RefDecision(update, Verdict.ALLOW, f"{rule} (created by this session)")
    if update.is_delete:
        return RefDecision(
            update,
            Verdict.REFUSE,
            "delete_not_created",
            f"airlock: may not delete {name}: this session did not create it",
        )
    ff = [r for r in matching if r.fast_forward]
    if not ff:
        return RefDecision(
            update,
            Verdict.REFUSE,
            "update_not_created",
            f"airlock: may not update {name}: this session did not create it "
            f"(it may create new branches under {_describe(rules)})",
        )
    return RefDecision(update, Verdict.NEEDS_FAST_FORWARD, str(ff[0]))


def decide_push(
    commands: Sequence[RefUpdate],
    rules: Sequence[RefRule],
    owned: frozenset[str],
    *,
    push_certificate: bool = False,
    max_refs: int = 1000,
    pushes_left: int = 1,
) -> PushDecision:
    """The decision for one push, before any of its pack has been read."""
    whole: str | None = None
    if push_certificate:
        whole = "airlock: signed pushes (push certificates) are not accepted"
    elif len(commands) > max_refs:
        whole = f"airlock: more than {max_refs} refs in one push"
    elif pushes_left <= 0:
        whole = "airlock: this session has used all its pushes"
    elif len({c.ref for c in commands}) != len(commands):
        whole = "airlock: the same ref twice in one push"
    decisions = tuple(_decide_one(c, rules, owned) for c in commands)
    return _whole(PushDecision(decisions, whole))


def _whole(decision: PushDecision) -> PushDecision:
    """All or nothing: once anything is refused, every command is."""
    if not decision.refused:
        return decision
    others = decision.refused_whole or "airlock: push refused whole: another ref was refused"
    refs = tuple(
        r
        if r.verdict is Verdict.REFUSE
        else replace(r, verdict=Verdict.REFUSE, rule="collateral", message=others)
        for r in decision.refs
    )
    return PushDecision(refs, decision.refused_whole)


def settle(decision: PushDecision, proven: Mapping[str, bool]) -> PushDecision:
    """Apply fast-forward proofs (ref -> proven) to the pending updates."""
    refs: list[RefDecision] = []
    for r in decision.refs:
        if r.verdict is not Verdict.NEEDS_FAST_FORWARD:
            refs.append(r)
        elif proven.get(r.update.ref, False):
            refs.append(replace(r, verdict=Verdict.ALLOW, rule=f"{r.rule} (fast-forward)"))
        else:
            name = short_ref(r.update.ref)
            refs.append(
                replace(
                    r,
                    verdict=Verdict.REFUSE,
                    rule="not_fast_forward",
                    message=f"airlock: {name}: not a fast-forward, or the old commit is not "
                    "reachable within the pushed commits (fetch, merge and push again)",
                )
            )
    return _whole(PushDecision(tuple(refs), decision.refused_whole))


def policy_digest(rules_by_repo: Mapping[str, Sequence[RefRule]]) -> str:
    """A short digest of a session's effective push rules, to tie each action to its rules."""
    canonical = json.dumps(
        {repo: [str(r) for r in rules] for repo, rules in sorted(rules_by_repo.items())},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
