"""Unit tests of the status -> exception mapping (no server needed)."""

from __future__ import annotations

import grpc
import pytest
import snakepit_bridge as sb
from snakepit_bridge.errors import error_from_status

C = grpc.StatusCode


@pytest.mark.parametrize(
    ("kind", "code", "cls"),
    [
        ("session_not_found", C.NOT_FOUND, sb.SessionNotFoundError),
        ("variable_not_found", C.NOT_FOUND, sb.VariableNotFoundError),
        ("invalid_value", C.INVALID_ARGUMENT, sb.ValidationError),
        ("invalid_constraints", C.INVALID_ARGUMENT, sb.ValidationError),
        ("invalid_type", C.INVALID_ARGUMENT, sb.ValidationError),
        ("invalid_argument", C.INVALID_ARGUMENT, sb.ValidationError),
        ("already_exists", C.ALREADY_EXISTS, sb.AlreadyExistsError),
        ("version_conflict", C.FAILED_PRECONDITION, sb.VersionConflictError),
        ("resource_exhausted", C.RESOURCE_EXHAUSTED, sb.ResourceExhaustedError),
    ],
)
def test_kind_decides_the_class(kind: str, code: grpc.StatusCode, cls: type[sb.BridgeError]) -> None:
    err = error_from_status(code, "the server's words", [("snakepit-error-kind", kind)])
    assert type(err) is cls
    assert (err.code, err.message, err.kind, str(err)) == (code, "the server's words", kind, "the server's words")


def test_kind_wins_over_the_code() -> None:
    err = error_from_status(C.NOT_FOUND, "x", [("snakepit-error-kind", "session_not_found")])
    assert isinstance(err, sb.SessionNotFoundError)
    err = error_from_status(C.UNKNOWN, "x", (("snakepit-error-kind", b"variable_not_found"),))
    assert isinstance(err, sb.VariableNotFoundError)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (C.NOT_FOUND, sb.NotFoundError),
        (C.INVALID_ARGUMENT, sb.ValidationError),
        (C.ALREADY_EXISTS, sb.AlreadyExistsError),
        (C.FAILED_PRECONDITION, sb.VersionConflictError),
        (C.RESOURCE_EXHAUSTED, sb.ResourceExhaustedError),
        (C.OUT_OF_RANGE, sb.ResourceExhaustedError),
        (C.UNAUTHENTICATED, sb.AuthenticationError),
        (C.UNAVAILABLE, sb.BridgeUnavailableError),
        (C.DEADLINE_EXCEEDED, sb.BridgeTimeoutError),
        (C.INTERNAL, sb.BridgeError),
        (C.UNIMPLEMENTED, sb.BridgeError),
    ],
)
def test_code_is_the_fallback(code: grpc.StatusCode, cls: type[sb.BridgeError]) -> None:
    err = error_from_status(code, "m", [("other-key", "v")])
    assert type(err) is cls
    assert err.kind is None


def test_unknown_kind_falls_back_to_the_code() -> None:
    err = error_from_status(C.ALREADY_EXISTS, "m", [("snakepit-error-kind", "brand_new_kind")])
    assert type(err) is sb.AlreadyExistsError
    assert err.kind == "brand_new_kind"


def test_version_conflict_carries_the_current_version() -> None:
    md = [("snakepit-error-kind", "version_conflict"), ("snakepit-current-version", "7")]
    err = error_from_status(C.FAILED_PRECONDITION, "m", md)
    assert isinstance(err, sb.VersionConflictError)
    assert err.current_version == 7
    assert error_from_status(C.FAILED_PRECONDITION, "m").current_version is None  # type: ignore[attr-defined]


def test_missing_details_get_a_message() -> None:
    err = error_from_status(C.UNAVAILABLE, "", None)
    assert err.message == "bridge call failed with UNAVAILABLE"


def test_python_friendly_bases() -> None:
    not_found = sb.VariableNotFoundError('variable "x" not found', C.NOT_FOUND)
    assert isinstance(not_found, KeyError)
    assert str(not_found) == 'variable "x" not found'  # not KeyError's quoted repr
    assert isinstance(sb.ValidationError("m"), ValueError)
    assert issubclass(sb.BridgeTimeoutError, sb.BridgeUnavailableError)
    assert all(
        issubclass(cls, sb.BridgeError)
        for cls in (sb.SessionNotFoundError, sb.VersionConflictError, sb.ResourceExhaustedError)
    )
