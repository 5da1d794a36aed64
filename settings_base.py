"""The machinery under config.py's settings: what a section of settings is and how its errors read. No setting is
declared here (config.py declares them all).

``Settings`` is the pydantic base of every section (strict types, unknown keys forbidden) that also reads as the
reference's HParams (``s.key``, ``s["key"]``, ``s.get``, ``**s``). ``validate`` builds one from parsed data and
rewrites pydantic's errors, all at once, into lines naming the file, the dotted setting, what it must be and what
it got, and for an unknown key the nearest valid one; ``parse_json``/``parse_yaml`` name the file's line and column
for a syntax error. ``Expect``, ``unset``, ``invalid``, ``must`` and ``check_distinct`` are the helpers that
declarations and their validators use.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

_ABSENT = object()


class Expect(str):
    """Field metadata: what a setting must be, where its type and range do not say it plainly."""


def when_null(empty: Any) -> pydantic.BeforeValidator:
    """A setting left empty (null, e.g. a yml key with nothing after it) reads as ``empty``."""
    return pydantic.BeforeValidator(lambda value: empty if value is None else value)


Number = int | float  # a JSON number kept as written (c_mel 45 stays 45 in a saved config)
Text = Annotated[str, when_null("")]
NonEmpty = Annotated[str, Field(min_length=1)]


def _is_none(value: Any) -> bool:
    return value is None


def unset(doc: str, **rules: Any) -> Any:
    """An optional setting, unset by default and then left out of saved configs (the reference lacks it)."""
    return Field(None, description=doc, exclude_if=_is_none, **rules)


def describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def nearest_hint(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else "valid: " + ", ".join(valid)


def invalid(key: str, problem: str) -> PydanticCustomError:
    """A failed check of setting ``key`` (``validate`` adds its section and the file); no key: ``problem`` says all."""
    return PydanticCustomError("setting", "{problem}", {"key": key, "problem": problem})


def must(key: str, expected: str, value: Any) -> PydanticCustomError:
    return invalid(key, f"must be {expected}, got {describe(value)}")


def check_distinct(key: str, names: list[str], expected: str) -> None:
    """A setting whose items must be named once each: ``must`` when a name in ``names`` repeats."""
    if len(set(names)) != len(names):
        raise must(key, expected, names)


class Settings(BaseModel, Mapping):
    """A section of settings that also reads as the reference's HParams (``s.key``, ``s["key"]``, ``s.get``,
    ``**s``). Assigning a name that is not a setting raises, naming the nearest one: it must not do nothing."""

    model_config = ConfigDict(extra="forbid", strict=True)
    _source: str = pydantic.PrivateAttr("<dict>")
    source = property(lambda self: self._source, doc="The file the settings came from; not a setting.")
    to_dict = BaseModel.model_dump  # plain JSON-ready values; unset optional settings are left out

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, data: Any) -> Any:
        return {} if data is None else data  # `server:` with nothing under it

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # a mapping's keys
        return iter(type(self).model_fields)

    def __len__(self) -> int:
        return len(type(self).model_fields)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__  # the settings, not the source

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in type(self).model_fields and not name.startswith("_"):
            raise AttributeError(f"{type(self).__name__} has no setting '{name}' ({nearest_hint(name, list(self))})")
        super().__setattr__(name, value)

    __setitem__ = __setattr__

    def get(self, key: str, default: Any = None) -> Any:
        """The setting's value; ``default`` is for a key that is not a setting. One that contradicts the declared
        default would be a second declaration, silently ignored: an error."""
        field = type(self).model_fields.get(key)
        if field is not None and default is not None and default != field.get_default(call_default_factory=True):
            raise TypeError(f"{type(self).__name__}.get({key!r}, {default!r}): declared default is {field.default!r}")
        return default if field is None else getattr(self, key)

    def setdefault(self, key: str, default: Any) -> Any:
        """Give an unset (None) setting ``default``; returns the value it has afterwards."""
        if self[key] is None:
            self[key] = default
        return self[key]


def flatten(settings: Settings, prefix: str = "") -> dict[str, Any]:
    """Every setting by its dotted name, in declaration order; a section is opened, any other value is one setting."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, Settings) else {prefix + key: value})
    return flat


def to_plain(value: Any) -> Any:
    """Nested dicts/lists of JSON values from settings objects, mappings, objects with ``to_dict`` or namespaces."""
    if isinstance(value, Mapping) and not isinstance(value, Settings):
        return {key: to_plain(item) for key, item in value.items()}
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return to_plain(value.to_dict())
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return to_plain(vars(value)) if hasattr(value, "__dict__") and not isinstance(value, type) else value


def parse_json(text: str, source: str) -> Any:
    """Parsed JSON text; a syntax error is one line naming the file, line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def parse_yaml(text: str, source: str) -> Any:
    """Parsed YAML text; a syntax error is one line naming the file, line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{source}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc


def validate(model: type[Settings], data: Any, source: str, reference: str, prefix: str = "", **context: Any) -> Any:
    """``model`` from parsed ``data``; every problem becomes one line ``<source>: ...`` of one ValueError. An
    unknown key's line says to check its spelling against ``reference``."""
    data = {} if data is None else to_plain(data)  # plain values: a settings object inside is validated anew
    if not isinstance(data, Mapping):
        what = f"setting '{prefix}'" if prefix else "the file"
        raise ValueError(f"{source}: {what} must be a mapping of settings, got {describe(data)}")
    try:
        settings = model.model_validate(data, context={"source": source, **context})
    except pydantic.ValidationError as error:
        raise ValueError(_report(error, model, data, f"{source}: ", prefix, reference)) from None
    settings._source = source
    return settings


def _report(error: pydantic.ValidationError, model: type[Settings], data: Any, lead: str, prefix: str, ref: str) -> str:
    """pydantic's errors as our lines: unknown keys per section with the nearest valid key, then each setting that
    is missing or must be something else; all at once, so a misspelled required key is reported with the typo."""
    unknown: dict[str, tuple[type[Settings], list[str]]] = {}
    problems = []
    for item in error.errors():
        section, path, field, value = _locate(model, data, item["loc"])
        name, kind, ctx = ".".join([prefix, *path] if prefix else path), item["type"], item.get("ctx") or {}
        if kind == "extra_forbidden":
            unknown.setdefault(name.rpartition(".")[0], (section, []))[1].append(path[-1])
        elif kind == "setting":
            key = ".".join(filter(None, [name, ctx["key"]]))
            problems.append(f"setting '{key}' {ctx['problem']}" if ctx["key"] else ctx["problem"])
        elif kind == "missing":
            problems.append(f"setting '{name}' is missing")
        else:
            got = item["input"] if value is _ABSENT else value
            problems.append(f"setting '{name}' must be {_expected(field)}, got {describe(got)}")
    for name, (section, keys) in reversed(unknown.items()):
        valid = list(section.model_fields)
        hints = "; ".join(f"'{name + '.' if name else ''}{key}' ({nearest_hint(key, valid)})" for key in keys)
        where = f"in section '{name}'" if name else "at the top level"
        problems.insert(0, f"unknown setting(s) {hints} {where}; check the spelling against {ref}")
    return "\n".join(lead + line for line in dict.fromkeys(problems))


def _locate(model: type[Settings], data: Any, loc: tuple[str | int, ...]) -> tuple[type[Settings], list, Any, Any]:
    """Follow an error's location through the sections: (the section reached, the parts of the setting's dotted
    name, its field or None for a key the section lacks, its raw value or _ABSENT). Inside a plain setting's
    value (a list item, a union member) the setting itself is what is reported."""
    section, path, field, value = model, [], None, data
    for part in loc:
        if field is not None:
            if (inner := _section_type(field.annotation)) is None:
                break
            if isinstance(part, int):
                path[-1] += f"[{part}]"
                value = value[part] if isinstance(value, list) and 0 <= part < len(value) else _ABSENT
                continue
            section = inner
        path.append(str(part))
        value = value.get(part, _ABSENT) if isinstance(value, Mapping) else _ABSENT
        if (field := section.model_fields.get(str(part))) is None:
            break
    return section, path, field, value


def _section_type(annotation: Any) -> type[Settings] | None:
    """The settings class a field holds (itself, optional, or as the items of a tuple), else None."""
    return next(
        (t for t in (annotation, *get_args(annotation)) if isinstance(t, type) and issubclass(t, Settings)), None
    )


def _expected(field: Any) -> str:
    """What a setting must be, in words: its Expect, else said by its type and range."""
    metadata = field.metadata if field is not None else []
    if texts := [item for item in metadata if isinstance(item, Expect)] or field is None:
        return texts[0] if texts is not True else "valid"
    kind, nullable = field.annotation, type(None) in get_args(field.annotation)
    kind = (
        next(arg for arg in get_args(kind) if arg is not type(None)) if nullable and len(get_args(kind)) == 2 else kind
    )
    if kind is bool:
        return "true, false or null" if nullable else "true or false"
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(map(repr, get_args(kind)))
    if kind is str:
        return "a non-empty string" if any(getattr(item, "min_length", 0) for item in metadata) else "a string"
    if _section_type(kind) is not None:
        return "a list of mappings of settings" if get_origin(kind) is tuple else "a mapping of settings"
    bounds = {
        rule: getattr(item, rule) for item in metadata for rule in ("gt", "ge", "lt", "le") if hasattr(item, rule)
    }
    low = f"({bounds['gt']}" if "gt" in bounds else f"[{bounds['ge']}" if "ge" in bounds else ""
    high = f"{bounds['lt']})" if "lt" in bounds else f"{bounds['le']}]" if "le" in bounds else ""
    noun = "an integer" if kind is int else "a number"
    if low and high:
        return f"{noun} in {low}, {high}"
    return f"{noun} {'>' if low[0] == '(' else '>='} {low[1:]}" if low else noun  # no setting has only a maximum
