"""Reading a suite file: strict safe YAML — UTF-8 only, at most 1 MiB and 32 levels, no tags, anchors or aliases,
no duplicate keys, string keys only — and the dotted paths (``train.optimizer.lr``) suites, ``--set`` and
``--only`` address run configs with. Every problem is a :class:`SuiteError` naming the file."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

__all__ = ["SuiteError", "read_yaml", "get_path", "set_path", "parse_assignment", "deep_merge", "flatten"]


class SuiteError(Exception):
    """A suite cannot be used. ``errors`` lists every problem as 'file: field: message'."""

    def __init__(self, path: str, errors: List[str]):
        self.path = path
        self.errors = errors
        super().__init__(f"{path}: {len(errors)} error(s) in suite\n" + "\n".join(f"  - {e}" for e in errors))


# --------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (YAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: Dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found key {key!r} of type {type(key).__name__}; keys must be strings (quote it)", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping_plain(node, deep=deep)


_StrictLoader.construct_mapping_plain = yaml.SafeLoader.construct_mapping  # type: ignore[attr-defined]
_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


MAX_SUITE_BYTES = 1 << 20  # a suite is a page of YAML; 1 MiB is far beyond any real one
MAX_DEPTH = 32  # nesting of mappings/sequences


def _decode(path: Path, raw: bytes) -> str:
    if len(raw) > MAX_SUITE_BYTES:
        raise SuiteError(str(path), [f"file is {len(raw)} bytes; a suite file may have at most {MAX_SUITE_BYTES}"])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SuiteError(str(path), [f"not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line} (offset {e.start}); "
                                     "save the file as UTF-8"]) from None


def _check_events(path: Path, text: str) -> None:
    """Before anything is built: no anchors/aliases (alias expansion is the 'billion laughs' attack and a
    suite never needs it) and a bounded nesting depth (deep nesting exhausts the stack)."""
    depth = 0
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
                m = ev.start_mark
                raise SuiteError(str(path), [f"YAML anchors and aliases (&name, *name) are not allowed in suite files "
                                             f"(line {m.line + 1}, column {m.column + 1}); write the values out"])
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    m = ev.start_mark
                    raise SuiteError(str(path), [f"nesting deeper than {MAX_DEPTH} levels at line {m.line + 1}"])
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return  # reported, with its position, by the loader below


def read_yaml(path: Path) -> Dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SuiteError(str(path), ["file not found"]) from None
    except OSError as e:
        raise SuiteError(str(path), [f"cannot read file: {e}"]) from None
    text = _decode(path, raw)
    _check_events(path, text)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or str(e)
        if "could not determine a constructor for the tag" in str(e):
            problem = f"{problem} — tags such as !!python/object are not allowed in suite files"
        raise SuiteError(str(path), [f"YAML error at {where}{problem}"]) from None
    except yaml.YAMLError as e:
        raise SuiteError(str(path), [f"YAML error: {e}"]) from None
    if data is None:
        raise SuiteError(str(path), ["file is empty; a suite needs at least 'name' and 'task'"])
    if not isinstance(data, dict):
        raise SuiteError(str(path), [f"top level must be a mapping of suite fields, got {type(data).__name__}"])
    return data


# --------------------------------------------------------------------------- dotted paths


def get_path(d: Dict[str, Any], path: str, default: Any = KeyError) -> Any:
    cur: Any = d
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif default is KeyError:
            raise KeyError(path)
        else:
            return default
    return cur


def set_path(d: Dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    cur = d
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_assignment(text: str) -> Tuple[str, Any]:
    """``key.path=value`` with the value read as a YAML scalar/flow value (``0.5``, ``[1, 2]``, ``gmres``)."""
    if "=" not in text:
        raise ValueError(f"expected key.path=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ValueError(f"bad dotted path in {text!r}")
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
