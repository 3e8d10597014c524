"""What an API server does with a CRD's schema, for the emulator: default, prune, validate.

Validation is JSON Schema (the ``jsonschema`` package) plus the few CEL rules our CRDs use,
evaluated by hand: a CRD with any other rule is refused at registration, so a new rule cannot
silently go unchecked in tests.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import jsonschema

_ABSENT = object()

# CEL rule text -> check(self, oldSelf); transition rules (with oldSelf) run on updates only.
CEL_RULES: dict[str, Callable[[Any, Any], bool]] = {
    "self == oldSelf": lambda new, old: new == old,
    "self.metadata.name == 'tutor-' + string(self.spec.tutorId)": lambda obj, _: (
        obj.get("metadata", {}).get("name") == f"tutor-{obj.get('spec', {}).get('tutorId')}"
    ),
    "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas": (
        lambda spec, _: (
            "minReplicas" not in spec
            or "maxReplicas" not in spec
            or spec["minReplicas"] <= spec["maxReplicas"]
        )
    ),
}
TRANSITION_RULES = {"self == oldSelf"}


def check_rules(schema: dict[str, Any], path: str = "") -> None:
    """Raise ``ValueError`` if the schema uses a CEL rule the emulator cannot evaluate."""
    for rule in schema.get("x-kubernetes-validations", []):
        if rule["rule"] not in CEL_RULES:
            raise ValueError(f"{path or '<root>'}: unsupported CEL rule {rule['rule']!r}")
    for key, sub in schema.get("properties", {}).items():
        check_rules(sub, f"{path}.{key}".lstrip("."))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            check_rules(schema[key], f"{path}[*]")


def apply_defaults(schema: dict[str, Any], value: Any) -> None:
    """Fill in ``default``s of absent properties, recursively, in place."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        if isinstance(schema.get("additionalProperties"), dict):
            for item in value.values():
                apply_defaults(schema["additionalProperties"], item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


def prune(schema: dict[str, Any], value: Any, root: bool = False) -> None:
    """Drop fields the schema does not declare (unless it preserves unknown fields), in place."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in list(value):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in props:
                prune(props[key], value[key])
            elif isinstance(extra, dict):
                prune(extra, value[key])
            elif not (extra is True or schema.get("x-kubernetes-preserve-unknown-fields")):
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune(schema["items"], item)


def _where(path: Any) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


def _message(error: jsonschema.ValidationError) -> str:
    where = _where(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{where + '.' if where else ''}{missing}: Required value"
    value, bound = json.dumps(error.instance), error.validator_value
    if error.validator == "minimum":
        detail = f"should be greater than or equal to {bound}"
    elif error.validator == "maximum":
        detail = f"should be less than or equal to {bound}"
    elif error.validator == "enum":
        detail = "supported values: " + ", ".join(f'"{v}"' for v in bound)
    elif error.validator == "pattern":
        detail = f"should match '{bound}'"
    else:
        detail = error.message
    return f"{where}: Invalid value: {value}: {detail}"


def _rules(schema: dict[str, Any], new: Any, old: Any, path: str, out: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if text in TRANSITION_RULES and old is _ABSENT:
            continue
        if not CEL_RULES[text](new, None if old is _ABSENT else old):
            out.append(f"{path or '<root>'}: Invalid value: {rule.get('message') or text}")
    if isinstance(new, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in new:
                prior = old.get(key, _ABSENT) if isinstance(old, dict) else _ABSENT
                _rules(sub, new[key], prior, f"{path}.{key}".lstrip("."), out)


def validate(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """Kubernetes-style messages for everything wrong with ``obj`` (empty when valid)."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    out = [_message(error) for error in errors]
    if not out:
        _rules(schema, obj, _ABSENT if old is None else old, "", out)
    return out
