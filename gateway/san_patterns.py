"""subjectAltName patterns of a tenant's credential policy (:mod:`gateway.credential_policy`): compiled with
Python's ``re``, and refused up front when their matching could backtrack for long.

``re`` has no time limit, and a tenant sets its own pattern and issues its own certificates: a pattern like
``(a+)+$`` matched against a name the tenant chose would hold a worker thread for ever. Allowed: at most
:data:`MAX_PATTERN_REPEATS` repeats (``*``, ``+``, ``{m,n}`` with n > 1), none inside another or around an
alternation, no backreferences or conditional groups; with names of at most 255 characters (longer ones
never match) a match then stays polynomial and small. The pattern is judged on ``re``'s own parse of it
(``re._parser``: CPython's, the one ``re.compile`` uses).
"""

from __future__ import annotations

import re
import re._constants as re_constants
import re._parser as re_parser
from typing import Any

#: Repeats a SAN pattern may hold.
MAX_PATTERN_REPEATS = 3

_REPEATS = (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT, re_constants.POSSESSIVE_REPEAT)


class UnsafePattern(ValueError):
    """A pattern that does not compile, or whose matching could backtrack for long (the message says why,
    completing "x509.san_pattern ...")."""


def compile_san_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, or :class:`UnsafePattern`."""
    try:
        compiled = re.compile(pattern)
        tree = re_parser.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        raise UnsafePattern("is not a valid regular expression") from None
    if _repeats(tree.data, inside=False) > MAX_PATTERN_REPEATS:
        raise UnsafePattern(f"may hold at most {MAX_PATTERN_REPEATS} repeats (*, +, {{m,n}})")
    return compiled


def _repeats(items: Any, *, inside: bool) -> int:
    """How many repeats ``items`` (a parsed pattern) holds; :class:`UnsafePattern` for a nested repeat, a
    repeated alternation or a backreference."""
    count = 0
    for op, av in items:
        if op in _REPEATS:
            many = av[1] > 1
            if many and inside:
                raise UnsafePattern("may not nest a repeat inside another")
            count += many + _repeats(av[2], inside=inside or many)
        elif op is re_constants.BRANCH:
            if inside:
                raise UnsafePattern("may not repeat an alternation (use a character class)")
            count += sum(_repeats(branch, inside=inside) for branch in av[1])
        elif op is re_constants.SUBPATTERN:
            count += _repeats(av[-1], inside=inside)
        elif op in (re_constants.ASSERT, re_constants.ASSERT_NOT):
            count += _repeats(av[1], inside=inside)
        elif op is re_constants.ATOMIC_GROUP:
            count += _repeats(av, inside=inside)
        elif op in (re_constants.GROUPREF, re_constants.GROUPREF_EXISTS):
            raise UnsafePattern("may not use backreferences or conditional groups")
    return count


__all__ = ["MAX_PATTERN_REPEATS", "UnsafePattern", "compile_san_pattern"]
