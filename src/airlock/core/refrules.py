"""Ref rules: which refs a write grant may change, and how.

A write grant carries a list of patterns. A pattern names branches (``agent/**``,
``feature/login``) or, when it starts with ``refs/``, any ref (``refs/tags/v*``). ``*``
matches within one path component, ``**`` any number of whole components (at least one at
the end of a pattern: ``agent/**`` is every branch under ``agent/``, not ``agent`` itself).
A pattern prefixed with ``ff:`` also allows fast-forward updates of refs the session did
not create; without it, a session may only create matching refs, and update or delete the
ones it created itself.

Grant syntax (CLI ``--grant``, control API ``grants``)::

    github.com/acme/app:write                      the config's git.push_branches
    github.com/acme/app:write=feature/login,docs/*  these patterns instead
    github.com/acme/app:write=agent/**,ff:main      agent/** plus fast-forwards of main
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

__all__ = ["FF_PREFIX", "InvalidRefRule", "RefRule", "parse_rules"]

FF_PREFIX = "ff:"
BRANCH_PREFIX = "refs/heads/"
MAX_RULES = 64
_PATTERN_CHARS = re.compile(r"^[A-Za-z0-9._/*+@-]{1,200}$")


class InvalidRefRule(ValueError):
    pass


@dataclass(frozen=True)
class RefRule:
    """One pattern of a write grant, as written (``ff:main``, ``refs/tags/v*``)."""

    pattern: str  # the full ref pattern: refs/heads/agent/**
    fast_forward: bool = False  # may update refs it did not create, fast-forward only

    def __str__(self) -> str:
        short = self.pattern.removeprefix(BRANCH_PREFIX)
        if short == self.pattern or _looks_like_ref(short):
            short = self.pattern  # say refs/heads/refs/x in full, never "refs/x"
        return (FF_PREFIX if self.fast_forward else "") + short

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        parts = self.pattern.split("/")
        out: list[str] = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "**":
                # Whole components: one or more at the end, zero or more in the middle.
                out.append("[^/]+(?:/[^/]+)*" if last else "(?:[^/]+/)*")
                continue
            out.append("[^/]*".join(re.escape(p) for p in part.split("*")))
            if not last:
                out.append("/")
        return re.compile("".join(out))

    def matches(self, ref: str) -> bool:
        return self._regex.fullmatch(ref) is not None


def _looks_like_ref(short: str) -> bool:
    return short.startswith("refs/")


def _parse_one(text: str) -> RefRule:
    fast_forward = text.startswith(FF_PREFIX)
    body = text.removeprefix(FF_PREFIX)
    if not _PATTERN_CHARS.match(body):
        raise InvalidRefRule(f"ref pattern {text!r}: letters, digits and ._/*+@- only")
    if ".." in body or "@{" in body:
        raise InvalidRefRule(f"ref pattern {text!r}: not a valid ref name")
    full = body if body.startswith("refs/") else BRANCH_PREFIX + body
    parts = full.split("/")
    for part in parts:
        if part == "" or part in (".", ".."):
            raise InvalidRefRule(f"ref pattern {text!r}: empty or dot component")
        if "**" in part and part != "**":
            raise InvalidRefRule(f"ref pattern {text!r}: ** must be a whole component")
        if part.startswith(".") or part.endswith(".lock"):
            raise InvalidRefRule(f"ref pattern {text!r}: not a valid ref name")
    if len(parts) < 3 or "*" in parts[0] + parts[1]:
        raise InvalidRefRule(f"ref pattern {text!r}: name refs/<kind>/... or a branch")
    return RefRule(pattern=full, fast_forward=fast_forward)


def parse_rules(text: str) -> tuple[RefRule, ...]:
    """``agent/**,ff:main`` -> rules; duplicates removed, order kept."""
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise InvalidRefRule(f"ref patterns {text!r}: empty pattern")
    if len(items) > MAX_RULES:
        raise InvalidRefRule(f"ref patterns: at most {MAX_RULES}")
    rules: list[RefRule] = []
    for item in items:
        rule = _parse_one(item)
        if rule not in rules:
            rules.append(rule)
    return tuple(rules)
