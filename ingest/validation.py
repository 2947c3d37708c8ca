"""Batch validation. The fast path decodes the whole batch with msgspec;
only when that fails does the slow path re-check every item and field, so a
422 names every bad field (msgspec stops at the first)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import Struct

from core.errors import BodyNotJson, FieldError, Invalid

from core.kinds import RecordKind
from persistence_api.audit import AUDIT_FIELD_CHECKS
from persistence_api.translation import FIELD_CHECKS, MAX_BATCH_ITEMS, MAX_JSON_DEPTH

# Limits msgspec's annotations cannot say, by field name (the names differ between kinds).
_CHECKS = {**FIELD_CHECKS, **AUDIT_FIELD_CHECKS}
_PATH_SUFFIX = re.compile(r" - at `\$[^`]*`$")


class BatchInvalid(Invalid):
    """The JSON breaks the rules of API.md; errors names every bad field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors, "The batch was not accepted: fix every field listed in errors.")


def validate_batch(kind: RecordKind, body: bytes) -> Sequence[Any]:
    """Returns the records of a valid batch of this kind; raises
    BodyNotJson or BatchInvalid otherwise."""
    try:
        return _validate(kind, body)
    except RecursionError:  # nested past Python's recursion limit, far deeper than any sink stores
        raise BatchInvalid([FieldError(kind.batch_field,
                                       f"objects and arrays nest deeper than {MAX_JSON_DEPTH} levels")]) from None


def _validate(kind: RecordKind, body: bytes) -> Sequence[Any]:
    try:
        records = kind.decode(body)
    except msgspec.ValidationError as exc:
        try:
            errors = _collect_errors(kind, body, exc)
        except msgspec.DecodeError as not_json:  # e.g. valid JSON followed by garbage
            raise BodyNotJson(f"the body is not valid JSON: {not_json}") from None
        raise BatchInvalid(errors) from None
    except msgspec.DecodeError as exc:
        raise BodyNotJson(f"the body is not valid JSON: {exc}") from None
    return records


def _collect_errors(kind: RecordKind, body: bytes, first: msgspec.ValidationError) -> list[FieldError]:
    list_name, item_type = kind.batch_field, kind.record
    doc = msgspec.json.decode(body)  # valid JSON: the fast path got past parsing
    errors = _check_envelope(doc, list_name)
    if isinstance(doc, dict) and isinstance(doc.get(list_name), list):
        for index, item in enumerate(doc[list_name]):
            errors.extend(_check_item(item, item_type, f"{list_name}[{index}]"))
    if not errors:  # the checks above missed a rule msgspec enforces: report msgspec's own words
        errors.append(FieldError(list_name, str(first)))
    return errors


def _check_envelope(doc: Any, list_name: str) -> list[FieldError]:
    if not isinstance(doc, dict):
        return [FieldError("", f"the body must be a JSON object with a `{list_name}` array")]
    items = doc.get(list_name)
    if list_name not in doc:
        return [FieldError(list_name, "required field is missing")]
    if not isinstance(items, list):
        return [FieldError(list_name, "must be an array")]
    if not items:
        return [FieldError(list_name, "must hold at least 1 item")]
    if len(items) > MAX_BATCH_ITEMS:
        return [FieldError(list_name, f"must hold at most {MAX_BATCH_ITEMS} items, got {len(items)}")]
    return []


def _check_item(item: Any, item_type: type[Struct], path: str) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(path, "must be an object")]
    errors: list[FieldError] = []
    if item_type.__struct_config__.forbid_unknown_fields:
        known = set(item_type.__struct_fields__)
        errors.extend(FieldError(f"{path}.{name}", "is not a field of this record") for name in item if name not in known)
    for field in msgspec.structs.fields(item_type):
        where = f"{path}.{field.name}"
        if field.name not in item:
            if field.required:
                errors.append(FieldError(where, "required field is missing"))
            continue
        message = _check_value(item[field.name], field)
        if message:
            errors.append(FieldError(where, message))
    return errors


def _check_value(value: Any, field: msgspec.structs.FieldInfo) -> str | None:
    try:
        converted = msgspec.convert(value, field.type)
    except msgspec.ValidationError as exc:
        return _PATH_SUFFIX.sub("", str(exc))
    check = _CHECKS.get(field.name)
    return check(converted) if check else None
