"""Tool argument errors as text a model can act on: which argument, what was wrong, what the
tool accepts there (read from the tool's input schema), and what to do next. Pure: pydantic's
error list and a JSON schema in, a message out.

Import rule: nothing from the package (layer ``pure`` in ``tests/test_layers.py``); the MCP layer
uses it.

pydantic's own text (``1 validation error for call[list_jobs]`` ... ``For further information
visit https://errors.pydantic.dev/...``) names a Python function the client never saw and sends
it to a web page; clients show it to a model that then guesses.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic_core import ErrorDetails

#: The longest rendering of a value the client sent (a huge string is cut).
VALUE_MAX = 80
#: Descriptions longer than this are left out of the message (the schema has them).
DESCRIPTION_MAX = 160


def describe(tool: str, errors: Sequence[ErrorDetails], schema: Mapping[str, Any] | None) -> str:
    """The message for a call of ``tool`` whose arguments failed validation."""
    schema = schema or {}
    props: Mapping[str, Any] = schema.get("properties") or {}
    defs: Mapping[str, Any] = schema.get("$defs") or {}
    required = set(schema.get("required") or ())
    lines = [f"Invalid arguments for `{tool}`; nothing was done."]
    for err in errors:
        loc = tuple(err.get("loc") or ())
        name = str(loc[0]) if loc else ""
        where = _where(loc)
        kind = err.get("type", "")
        prop = props.get(name)
        if kind == "unexpected_keyword_argument" or (prop is None and name and props):
            known = ", ".join(props) or "none"
            line = f"- `{where}` is not an argument of `{tool}` (its arguments: {known})."
            close = difflib.get_close_matches(name, list(props), n=1)
            if close:
                line += f" Did you mean `{close[0]}`?"
            lines.append(line)
            continue
        if kind in ("missing", "missing_argument"):
            line = f"- `{where}` is required."
        else:
            msg = str(err.get("msg", "is not valid")).rstrip(".")
            line = f"- `{where}`: {msg}; got {_value(err.get('input'))}."
        if prop is not None:
            line += f" Accepted: {accepted(prop, defs, required=name in required)}."
            desc = prop.get("description")
            if isinstance(desc, str) and len(desc) <= DESCRIPTION_MAX:
                line += f" {desc.rstrip('.')}."
        lines.append(line)
    lines.append(f"Call `{tool}` again with the arguments fixed.")
    return "\n".join(lines)


def accepted(
    prop: Mapping[str, Any], defs: Mapping[str, Any] | None = None, *, required: bool = False
) -> str:
    """What a JSON schema accepts, in words: ``an integer from 1 to 200 (default 20)``."""
    defs = defs or {}
    variants = [_deref(p, defs) for p in prop.get("anyOf", [prop])]
    options = [p for p in variants if p.get("type") != "null"]
    text = " or ".join(_one(p, defs) for p in options) or "null"
    if len(options) < len(variants):
        text += ", or null"
    if "default" in prop and not required:
        default = prop["default"]
        text += " (omit it for the default)" if default is None else f" (default {_json(default)})"
    return text


def _deref(p: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = p.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"))
        if isinstance(target, Mapping):
            return target
    return p


def _one(p: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    p = _deref(p, defs)
    if "enum" in p:
        return "one of " + ", ".join(_json(v) for v in p["enum"])
    kind = p.get("type")
    if kind in ("integer", "number"):
        noun = "an integer" if kind == "integer" else "a finite number"
        lo, hi = p.get("minimum"), p.get("maximum")
        if "exclusiveMinimum" in p:
            return f"{noun} greater than {_json(p['exclusiveMinimum'])}" + (
                f" and at most {_json(hi)}" if hi is not None else ""
            )
        if lo is not None and hi is not None:
            return f"{noun} from {_json(lo)} to {_json(hi)}"
        if lo is not None:
            return f"{noun} of at least {_json(lo)}"
        if hi is not None:
            return f"{noun} of at most {_json(hi)}"
        return noun
    if kind == "string":
        most = p.get("maxLength")
        return "a string" + (f" of at most {most} characters" if most is not None else "")
    if kind == "boolean":
        return "true or false"
    if kind == "array":
        items = p.get("items")
        what = f"a list of {_plural(_one(items, defs))}" if isinstance(items, Mapping) else "a list"
        most = p.get("maxItems")
        return what + (f" (at most {most} items)" if most is not None else "")
    if kind == "object":
        values = p.get("additionalProperties")
        if isinstance(values, Mapping):
            return f"an object whose values are {_plural(_one(values, defs))}"
        return "an object"
    return "a value of the type in the tool's input schema"


def _plural(noun: str) -> str:
    for article in ("a ", "an "):
        if noun.startswith(article):
            word, _, rest = noun.removeprefix(article).partition(" ")
            return f"{word}s {rest}".rstrip()
    return noun


def _where(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "arguments"
    out = str(loc[0])
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f"[{_json(part)}]"
    return out


def _json(value: object) -> str:
    """A value as JSON (what the client writes): ``"stdout"``, ``null``, ``[]``."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _value(value: object) -> str:
    """A short rendering of a value the client sent: JSON, with control characters and lone
    surrogates escaped; a long one is cut, saying how long it was."""
    text = _json(value)
    if len(text) <= VALUE_MAX:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else None
    if isinstance(value, list | dict):
        size = f"{len(value)} items"
    return f"{text[:VALUE_MAX]}..." + (f" ({size})" if size else "")
