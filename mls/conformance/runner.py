"""Runner for the MLS working group's test vectors (mls-implementations/test-vectors).

Each vector kind has a module in this package that registers a *case runner* with :func:`vector_kind`:
a function that takes one case (a JSON object) and returns normally when the implementation agrees with
it, raises :class:`Skip` when the case cannot be run, and raises anything else when it disagrees.

Files are recognised by the names used in the mls-implementations repository (``tree-math.json``,
``passive-client-welcome.json``, …; every ``passive-client-*`` file is in the passive-client format) or,
failing that, by the keys of their first case. Unknown files are reported as skipped, never ignored.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

CaseRunner = Callable[[dict[str, Any]], None]


class Skip(Exception):
    """Raised by a case runner for a case it cannot run; the reason is reported."""


@dataclasses.dataclass(frozen=True)
class VectorKind:
    name: str
    run_case: CaseRunner
    file_names: tuple[str, ...]
    signature_keys: frozenset[str]
    file_prefixes: tuple[str, ...] = ()


_KINDS: dict[str, VectorKind] = {}


def vector_kind(
    name: str, *, keys: Iterable[str], file_names: Iterable[str] = (), file_prefixes: Iterable[str] = ()
) -> Callable[[CaseRunner], CaseRunner]:
    """Register a case runner for the vector kind ``name``.

    ``file_names`` are the stems recognised by name (``name`` itself is always one); ``keys`` are the
    top-level keys a case of this kind carries, used to recognise a file by content.
    """

    def register(fn: CaseRunner) -> CaseRunner:
        _KINDS[name] = VectorKind(name, fn, (name, *file_names), frozenset(keys), tuple(file_prefixes))
        return fn

    return register


def load_kinds() -> dict[str, VectorKind]:
    """Every vector kind: each runner module registers its kind with :func:`vector_kind` when imported."""
    from mls.conformance import (  # noqa: F401 (imported for their registrations)
        vectors_crypto_basics,
        vectors_deserialization,
        vectors_key_schedule,
        vectors_message_protection,
        vectors_messages,
        vectors_passive_client,
        vectors_psk_secret,
        vectors_secret_tree,
        vectors_transcript_hashes,
        vectors_tree_math,
        vectors_tree_operations,
        vectors_tree_validation,
        vectors_treekem,
        vectors_welcome,
    )

    return _KINDS


def kind_for(path: Path, cases: Any) -> VectorKind | None:
    kinds = load_kinds()
    stem = path.stem
    for kind in kinds.values():
        if stem in kind.file_names or any(stem.startswith(p) for p in kind.file_prefixes):
            return kind
    if isinstance(cases, list) and cases and isinstance(cases[0], dict):
        keys = set(cases[0])
        matches = [k for k in kinds.values() if k.signature_keys and k.signature_keys == keys]
        if len(matches) == 1:
            return matches[0]
    return None


@dataclasses.dataclass
class FileResult:
    name: str
    kind: str | None
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    skips: list[str] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def case_label(index: int, case: Any) -> str:
    suite = case.get("cipher_suite") if isinstance(case, dict) else None
    return f"case {index}" + (f" (suite {suite})" if suite is not None else "")


def run_file(path: Path, root: Path | None = None) -> FileResult:
    name = str(path.relative_to(root)) if root else path.name
    try:
        cases = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return FileResult(name, None, skipped=1, skips=[f"unreadable JSON: {e}"])
    kind = kind_for(path, cases)
    if kind is None:
        return FileResult(name, None, skipped=1, skips=["no runner recognises this file"])
    result = FileResult(name, kind.name)
    if not isinstance(cases, list):
        cases = [cases]
    for i, case in enumerate(cases):
        label = case_label(i, case)
        try:
            kind.run_case(case)
        except Skip as e:
            result.skipped += 1
            result.skips.append(f"{label}: {e}")
        except Exception as e:  # a disagreement of any kind is a failure of that case
            result.failed += 1
            tb = traceback.extract_tb(e.__traceback__)[-1]
            result.failures.append(f"{label}: {type(e).__name__}: {e} [{Path(tb.filename).name}:{tb.lineno}]")
        else:
            result.passed += 1
    return result


def vector_files(paths: Iterable[Path]) -> Iterator[tuple[Path, Path | None]]:
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*.json")):
                yield f, p
        else:
            yield p, None
