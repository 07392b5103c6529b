"""Human durations such as ``90s``, ``15m``, ``8h``, ``1h30m`` or ``2d``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Return the number of seconds in ``text``; raise ValueError on anything else."""
    s = text.strip().lower()
    if s.isdigit():
        seconds = int(s)
    else:
        pos = 0
        seconds = 0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            seconds += int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 15m, 8h, 1h30m or 2d")
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds
