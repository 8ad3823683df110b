"""One rule id per validation check (``mls/errors.py``): every ``ValidationError``/``CryptoError`` names
its check as ``"<RFC 9420 section>/<check>"``, e.g. ``"7.3/leaf-signature"``, and no two checks share an id.

The ids are read from the source: the AST of every module under :data:`SCANNED` is walked for calls of
``ValidationError(...)``/``CryptoError(...)``. A module-level helper that builds the error from one of its
parameters (like x509's ``_fail(rule, message)``) is not a site itself: each call of the helper is, with
the id it passes. An id must be a string literal at its site, so that grepping for it finds the check.

The gateway's own checks are sites too: a ``Problem(..., rule=...)`` (``gateway/errors.py``) names its
check in the same format, unique among all ids, since its problem document carries ``rule`` just as one
copied from a library error does. A ``Problem`` that copies an error's ``.rule`` is not a site (the error
is), nor is one without a rule.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Packages whose raise sites are checked.
SCANNED = ("mls", "native", "hsm", "gateway")
#: Paths (relative to the repository) still raising section-only ids; they get their ids in a second pass
#: and leave this tuple then. Everything else must pass today.
PENDING_SECOND_PASS: tuple[str, ...] = ()
#: Ids deliberately raised from more than one site (literally the same check reached from two places).
#: Empty: such a check lives in one helper that both places call.
SHARED_IDS: frozenset[str] = frozenset()

RULE_ID = re.compile(r"^\d+(\.\d+)*/[a-z0-9]+(-[a-z0-9]+)*$")
ERROR_TYPES = frozenset({"ValidationError", "CryptoError"})
#: The gateway's problem, whose ``rule`` keyword names the check that refused a request.
PROBLEM_TYPE = "Problem"


@dataclass(frozen=True)
class RuleSite:
    """One place that raises a check's error: ``rule`` is the literal id, or ``None`` if not a literal."""

    where: str
    rule: str | None


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _rule_argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _problem_rule(call: ast.Call) -> ast.expr | None:
    """The ``rule`` of a ``Problem(...)`` that names a check of its own; ``None`` if it has no rule or
    copies an error's (``rule=exc.rule``: the error's site is the site)."""
    rule = next((k.value for k in call.keywords if k.arg == "rule"), None)
    if rule is None or (isinstance(rule, ast.Constant) and rule.value is None):
        return None
    if isinstance(rule, ast.Attribute) and rule.attr == "rule":
        return None
    return rule


def _error_rule(call: ast.Call) -> ast.expr | None:
    """The rule argument of a ``ValidationError``/``CryptoError``/``Problem`` call, else ``None``."""
    name = _called_name(call)
    if name in ERROR_TYPES:
        return _rule_argument(call, 0, "rule")
    if name == PROBLEM_TYPE:
        return _problem_rule(call)
    return None


def _helpers(tree: ast.Module) -> tuple[dict[str, tuple[int, str]], set[int]]:
    """The module's functions that pass one of their parameters on as an error's rule: name -> (position
    of that parameter, its name); and the ``id()`` of those inner error calls, which are not sites."""
    helpers: dict[str, tuple[int, str]] = {}
    inner: set[int] = set()
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef):
            continue
        params = [a.arg for a in func.args.args if a.arg not in ("self", "cls")]
        for call in ast.walk(func):
            if not isinstance(call, ast.Call):
                continue
            rule = _error_rule(call)
            if isinstance(rule, ast.Name) and rule.id in params:
                helpers[func.name] = (params.index(rule.id), rule.id)
                inner.add(id(call))
    return helpers, inner


def rule_sites(source: str, filename: str) -> list[RuleSite]:
    """Every site in ``source`` that raises a validation error, with the rule id it passes."""
    tree = ast.parse(source, filename)
    helpers, inner = _helpers(tree)
    sites = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or id(call) in inner:
            continue
        name = _called_name(call)
        if name in ERROR_TYPES or name == PROBLEM_TYPE:
            rule = _error_rule(call)
            if rule is None and name == PROBLEM_TYPE:
                continue
        elif name in helpers:
            rule = _rule_argument(call, *helpers[name])
        else:
            continue
        literal = rule.value if isinstance(rule, ast.Constant) and isinstance(rule.value, str) else None
        sites.append(RuleSite(f"{filename}:{call.lineno}", literal))
    return sites


def rule_id_problems(sites: list[RuleSite], shared: frozenset[str] = frozenset()) -> list[str]:
    """What is wrong with the ids of ``sites``: non-literal or malformed ids, ids used at several sites."""
    problems = [f"{s.where}: the rule is not a string literal" for s in sites if s.rule is None]
    problems += [
        f"{s.where}: {s.rule!r} is not '<section>/<check>'"
        for s in sites
        if s.rule is not None and not RULE_ID.match(s.rule)
    ]
    counts = Counter(s.rule for s in sites if s.rule is not None)
    for rule, n in sorted(counts.items()):
        if n > 1 and rule not in shared:
            where = ", ".join(s.where for s in sites if s.rule == rule)
            problems.append(f"{rule!r} is raised at {n} sites: {where}")
    return problems


def _pending(relative: str) -> bool:
    return any(relative == p or relative.startswith(p.rstrip("/") + "/") for p in PENDING_SECOND_PASS)


def _repository_sites() -> list[RuleSite]:
    sites = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not _pending(relative):
                sites += rule_sites(path.read_text(encoding="utf-8"), relative)
    return sites


def _rfc9420_sections(spec: Path) -> set[str]:
    """The section numbers of RFC 9420's body, numbered from its markdown headings (code blocks skipped)."""
    numbers: list[int] = []
    sections: set[str] = set()
    in_code = False
    for line in spec.read_text(encoding="utf-8").splitlines():
        if line.startswith("~~~"):
            in_code = not in_code
            continue
        heading = re.match(r"^(#+) ", line)
        if in_code or heading is None:
            continue
        depth = len(heading.group(1))
        numbers = numbers[:depth] + [0] * (depth - len(numbers))
        numbers[-1] += 1
        sections.add(".".join(map(str, numbers)))
        if line.startswith("# IANA Considerations"):
            break
    return sections


def test_every_rule_id_is_a_literal_section_and_check_used_once() -> None:
    sites = _repository_sites()
    assert len(sites) > 80, "the scan found too few raise sites: is it still reading the packages?"
    assert rule_id_problems(sites, SHARED_IDS) == []


def test_rule_id_sections_exist_in_rfc9420(shared_dir: Path) -> None:
    sections = _rfc9420_sections(shared_dir / "specs" / "rfc9420-mls-protocol.md")
    assert {"5.3.1", "7.9.2", "12.4.3.1", "15.3"} <= sections and "12.4.3.4" not in sections
    unknown = [
        f"{s.where}: {s.rule}" for s in _repository_sites() if s.rule and s.rule.split("/")[0] not in sections
    ]
    assert unknown == []


def test_helper_sites_are_their_callers() -> None:
    # x509's _fail(rule, message) builds the errors: its callers are the sites, each with its own id.
    x509 = [s for s in _repository_sites() if s.where.startswith("mls/credentials/x509.py:")]
    assert len(x509) > 20
    assert all(s.rule is not None and s.rule.startswith("5.3.1/") for s in x509)


def test_gateway_problem_rules_are_sites() -> None:
    # The gateway's own checks (a Problem with a literal rule) are scanned; the Problem that copies a
    # library error's rule (gateway/errors.py) is not a site of its own.
    gateway = [s for s in _repository_sites() if s.where.startswith("gateway/")]
    assert {s.where.split(":")[0] for s in gateway} >= {
        "gateway/group_operations.py",
        "gateway/groups.py",
        "gateway/mls_inputs.py",
    }
    assert not any(s.where.startswith("gateway/errors.py:") for s in gateway)


def test_group_sites_are_scanned() -> None:
    # mls/group/ is no longer exempt: its checks carry full ids like every other package's.
    group = [s for s in _repository_sites() if s.where.startswith("mls/group/")]
    assert len(group) > 50
    assert {"12.4.3.1/welcome-message-type", "12.2/committer-self-remove"} <= {s.rule for s in group}


def test_pending_paths_exist() -> None:
    # An entry that no longer names a file or package would silently exempt nothing (or a new path).
    for pending in PENDING_SECOND_PASS:
        assert (ROOT / pending).exists(), pending


SAMPLE = """
from mls.errors import CryptoError, ValidationError

def _fail(rule: str, message: str) -> ValidationError:
    return ValidationError(rule, message)

def check(x: int, rule: str) -> None:
    if x == 0:
        raise ValidationError("7.3/leaf-signature", "one")
    if x == 1:
        raise CryptoError("7.3/leaf-signature", "two")
    if x == 2:
        raise ValidationError("7.3", "section only")
    if x == 3:
        raise _fail("5.3.1/Bad_Slug", "three")
    if x == 4:
        raise _fail("5.3.1/x509-expired", "four")
    raise ValidationError(rule="12.2/" + "dynamic", message="five")
"""


def test_checker_catches_duplicate_malformed_and_dynamic_ids() -> None:
    sites = rule_sites(SAMPLE, "sample.py")
    assert sorted((s.rule or "") for s in sites) == sorted(
        ["7.3/leaf-signature", "7.3/leaf-signature", "7.3", "5.3.1/Bad_Slug", "5.3.1/x509-expired", ""]
    )
    problems = rule_id_problems(sites)
    assert len(problems) == 4, problems
    assert any("not a string literal" in p and "sample.py:18" in p for p in problems)
    assert any("'7.3' is not" in p for p in problems)
    assert any("'5.3.1/Bad_Slug' is not" in p for p in problems)
    assert any("'7.3/leaf-signature' is raised at 2 sites" in p for p in problems)
    # An id on the allow-list of deliberately shared checks may occur twice; the other problems stay.
    assert len(rule_id_problems(sites, frozenset({"7.3/leaf-signature"}))) == 3


PROBLEM_SAMPLE = """
from gateway.errors import Problem

def fail(rule: str) -> Problem:
    return Problem("validation_failed", "helper", rule=rule)

def check(x: int, exc: ValidationError) -> None:
    if x == 0:
        raise Problem("validation_failed", "one", rule="12.4.3.2/resync-prior-leaf")
    if x == 1:
        raise Problem("validation_failed", "two", rule="12.4.3.2/resync-prior-leaf")
    if x == 2:
        raise Problem("validation_failed", "section only", rule="8.6")
    if x == 3:
        raise Problem("validation_failed", exc.message, rule=exc.rule)
    if x == 4:
        raise Problem("conflict", "no rule")
    if x == 5:
        raise fail("8.6/resumption-psk-available")
    raise Problem("validation_failed", "dynamic", rule="8.6/" + str(x))
"""


def test_checker_catches_problem_ids_and_skips_copied_ones() -> None:
    sites = rule_sites(PROBLEM_SAMPLE, "gateway/sample.py")
    assert sorted((s.rule or "") for s in sites) == sorted(
        [
            "12.4.3.2/resync-prior-leaf",
            "12.4.3.2/resync-prior-leaf",
            "8.6",
            "8.6/resumption-psk-available",
            "",
        ]
    )
    problems = rule_id_problems(sites)
    assert len(problems) == 3, problems
    assert any("not a string literal" in p and "gateway/sample.py:20" in p for p in problems)
    assert any("'8.6' is not" in p for p in problems)
    assert any("'12.4.3.2/resync-prior-leaf' is raised at 2 sites" in p for p in problems)


@pytest.mark.parametrize("rule", ["7.3/leaf-signature", "12.4.3.1/welcome-key-package-ref", "5.1/aead-tag"])
def test_well_formed_ids_pass(rule: str) -> None:
    assert rule_id_problems([RuleSite("x.py:1", rule)]) == []
