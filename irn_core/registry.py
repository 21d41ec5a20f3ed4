"""One registry class for everything chosen by name in a config: solvers, models, tasks, corruptions,
regularisers, report kinds, optimisers, schedulers, samplers, pruners, executors.

    SOLVERS = Registry("nonlinear solver")
    @SOLVERS.register("anderson")
    def anderson(f, x0, *, tol=1e-6, m=5): ...
    SOLVERS.get("andersen")   # ValueError: unknown nonlinear solver 'andersen'; did you mean 'anderson'? valid: ...
    SOLVERS.check("anderson", {"tol": 1e-4, "mm": 3})  # ValueError: unknown option(s) 'mm' ...; did you mean 'm'?

An entry's options are the keyword parameters of the registered callable (or of a class's ``__init__``), or the
names given as ``options=`` when registering (e.g. a report kind's defaults).
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Generic, Iterable, Iterator, List, Mapping, Optional, Sequence, TypeVar

__all__ = ["Registry", "unknown_name", "unknown_options"]

T = TypeVar("T")


def _suggest(word: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(valid), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def unknown_name(kind: str, name: Any, valid: Sequence[str]) -> str:
    """The one wording of an unknown name: ``unknown <kind> 'x'; did you mean 'y'? valid: a, b``."""
    return f"unknown {kind} {name!r}; {_suggest(name, valid)}valid: {', '.join(valid)}"


def unknown_options(what: str, bad: Sequence[str], valid: Sequence[str]) -> str:
    """The one wording of unknown options: ``unknown option(s) 'x' for <what>; did you mean 'y'? valid: a, b``."""
    hint = _suggest(bad[0], valid) if len(bad) == 1 else ""
    return f"unknown option(s) {', '.join(map(repr, bad))} for {what}; {hint}valid: {', '.join(valid) or '(none)'}"


def _keyword_options(entry: Callable) -> List[str]:
    """A class: every named parameter of its constructor; a function: its keyword-only parameters (the
    positional ones are the problem it is called on, e.g. a solver's ``f, x0``)."""
    params = inspect.signature(entry).parameters.values()
    if inspect.isclass(entry):
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [p.name for p in params if p.kind == p.KEYWORD_ONLY]


class Registry(Generic[T]):
    """Name -> entry (a callable or a class). ``register / get / names / options / check``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}
        self._options: Dict[str, List[str]] = {}

    def register(self, name: str, entry: Optional[T] = None, *, options: Optional[Iterable[str]] = None):
        """``@reg.register("name")`` or ``reg.register("name", entry)``; ``options`` overrides the signature."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            if options is not None:
                self._options[name] = list(options)
            return obj

        return add if entry is None else add(entry)

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(unknown_name(self.kind, name, self.names()))
        return self._entries[name]

    __getitem__ = get

    def options(self, name: str) -> List[str]:
        """The options the entry accepts (declared, else its keyword parameters)."""
        entry = self.get(name)
        return list(self._options[name]) if name in self._options else _keyword_options(entry)

    def check(self, name: str, opts: Mapping[str, Any]) -> None:
        """ValueError naming every unknown option of ``opts`` for entry ``name`` (and the valid ones)."""
        valid = self.options(name)
        bad = sorted(set(opts) - set(valid))
        if bad:
            raise ValueError(unknown_options(f"{self.kind} {name!r}", bad, valid))
