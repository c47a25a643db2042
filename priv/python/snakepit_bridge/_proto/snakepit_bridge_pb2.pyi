from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PingRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("message", "server_time")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    message: str
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, message: _Optional[str] = ..., server_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InitializeSessionRequest(_message.Message):
    __slots__ = ("session_id", "metadata", "config")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    metadata: _containers.ScalarMap[str, str]
    config: SessionConfig
    def __init__(self, session_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., config: _Optional[_Union[SessionConfig, _Mapping]] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("enable_caching", "cache_ttl_seconds", "enable_telemetry")
    ENABLE_CACHING_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENABLE_TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    enable_caching: bool
    cache_ttl_seconds: int
    enable_telemetry: bool
    def __init__(self, enable_caching: bool = ..., cache_ttl_seconds: _Optional[int] = ..., enable_telemetry: bool = ...) -> None: ...

class InitializeSessionResponse(_message.Message):
    __slots__ = ("success", "error_message", "initial_variables")
    class InitialVariablesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Variable
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Variable, _Mapping]] = ...) -> None: ...
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_VARIABLES_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    initial_variables: _containers.MessageMap[str, Variable]
    def __init__(self, success: bool = ..., error_message: _Optional[str] = ..., initial_variables: _Optional[_Mapping[str, Variable]] = ...) -> None: ...

class CleanupSessionRequest(_message.Message):
    __slots__ = ("session_id", "force")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    force: bool
    def __init__(self, session_id: _Optional[str] = ..., force: bool = ...) -> None: ...

class CleanupSessionResponse(_message.Message):
    __slots__ = ("success", "resources_cleaned")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_CLEANED_FIELD_NUMBER: _ClassVar[int]
    success: bool
    resources_cleaned: int
    def __init__(self, success: bool = ..., resources_cleaned: _Optional[int] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session_id", "metadata", "created_at", "variable_count", "tool_count", "watcher_count")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOOL_COUNT_FIELD_NUMBER: _ClassVar[int]
    WATCHER_COUNT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    metadata: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    variable_count: int
    tool_count: int
    watcher_count: int
    def __init__(self, session_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., variable_count: _Optional[int] = ..., tool_count: _Optional[int] = ..., watcher_count: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id", "client_time")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_time: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., client_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("server_time", "session_valid")
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    SESSION_VALID_FIELD_NUMBER: _ClassVar[int]
    server_time: _timestamp_pb2.Timestamp
    session_valid: bool
    def __init__(self, server_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., session_valid: bool = ...) -> None: ...

class Variable(_message.Message):
    __slots__ = ("id", "name", "type", "value", "constraints_json", "metadata", "source", "last_updated_at", "version", "binary_value")
    class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ELIXIR: _ClassVar[Variable.Source]
        PYTHON: _ClassVar[Variable.Source]
    ELIXIR: Variable.Source
    PYTHON: Variable.Source
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BINARY_VALUE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    type: str
    value: _any_pb2.Any
    constraints_json: str
    metadata: _containers.ScalarMap[str, str]
    source: Variable.Source
    last_updated_at: _timestamp_pb2.Timestamp
    version: int
    binary_value: bytes
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., value: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., constraints_json: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., source: _Optional[_Union[Variable.Source, str]] = ..., last_updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., binary_value: _Optional[bytes] = ...) -> None: ...

class RegisterVariableRequest(_message.Message):
    __slots__ = ("session_id", "name", "type", "initial_value", "constraints_json", "metadata", "initial_binary_value")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BINARY_VALUE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    name: str
    type: str
    initial_value: _any_pb2.Any
    constraints_json: str
    metadata: _containers.ScalarMap[str, str]
    initial_binary_value: bytes
    def __init__(self, session_id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., initial_value: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., constraints_json: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., initial_binary_value: _Optional[bytes] = ...) -> None: ...

class RegisterVariableResponse(_message.Message):
    __slots__ = ("success", "variable_id", "error_message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    variable_id: str
    error_message: str
    def __init__(self, success: bool = ..., variable_id: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class GetVariableRequest(_message.Message):
    __slots__ = ("session_id", "variable_identifier", "bypass_cache")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    variable_identifier: str
    bypass_cache: bool
    def __init__(self, session_id: _Optional[str] = ..., variable_identifier: _Optional[str] = ..., bypass_cache: bool = ...) -> None: ...

class GetVariableResponse(_message.Message):
    __slots__ = ("variable", "from_cache")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    variable: Variable
    from_cache: bool
    def __init__(self, variable: _Optional[_Union[Variable, _Mapping]] = ..., from_cache: bool = ...) -> None: ...

class SetVariableRequest(_message.Message):
    __slots__ = ("session_id", "variable_identifier", "value", "metadata", "expected_version", "binary_value")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    BINARY_VALUE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    variable_identifier: str
    value: _any_pb2.Any
    metadata: _containers.ScalarMap[str, str]
    expected_version: int
    binary_value: bytes
    def __init__(self, session_id: _Optional[str] = ..., variable_identifier: _Optional[str] = ..., value: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., expected_version: _Optional[int] = ..., binary_value: _Optional[bytes] = ...) -> None: ...

class SetVariableResponse(_message.Message):
    __slots__ = ("success", "error_message", "new_version")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    new_version: int
    def __init__(self, success: bool = ..., error_message: _Optional[str] = ..., new_version: _Optional[int] = ...) -> None: ...

class BatchGetVariablesRequest(_message.Message):
    __slots__ = ("session_id", "variable_identifiers", "include_metadata", "bypass_cache", "values_only")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    VALUES_ONLY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    variable_identifiers: _containers.RepeatedScalarFieldContainer[str]
    include_metadata: bool
    bypass_cache: bool
    values_only: bool
    def __init__(self, session_id: _Optional[str] = ..., variable_identifiers: _Optional[_Iterable[str]] = ..., include_metadata: bool = ..., bypass_cache: bool = ..., values_only: bool = ...) -> None: ...

class BatchGetVariablesResponse(_message.Message):
    __slots__ = ("variables", "missing_variables", "values")
    class VariablesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Variable
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Variable, _Mapping]] = ...) -> None: ...
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    MISSING_VARIABLES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.MessageMap[str, Variable]
    missing_variables: _containers.RepeatedScalarFieldContainer[str]
    values: BatchValues
    def __init__(self, variables: _Optional[_Mapping[str, Variable]] = ..., missing_variables: _Optional[_Iterable[str]] = ..., values: _Optional[_Union[BatchValues, _Mapping]] = ...) -> None: ...

class BatchValues(_message.Message):
    __slots__ = ("identifiers", "ids", "names", "types", "versions", "values_json", "floats")
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VALUES_JSON_FIELD_NUMBER: _ClassVar[int]
    FLOATS_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedScalarFieldContainer[str]
    ids: _containers.RepeatedScalarFieldContainer[str]
    names: _containers.RepeatedScalarFieldContainer[str]
    types: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.RepeatedScalarFieldContainer[int]
    values_json: bytes
    floats: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, identifiers: _Optional[_Iterable[str]] = ..., ids: _Optional[_Iterable[str]] = ..., names: _Optional[_Iterable[str]] = ..., types: _Optional[_Iterable[str]] = ..., versions: _Optional[_Iterable[int]] = ..., values_json: _Optional[bytes] = ..., floats: _Optional[_Iterable[float]] = ...) -> None: ...

class BatchSetVariablesRequest(_message.Message):
    __slots__ = ("session_id", "updates", "metadata", "atomic", "binary_updates", "value_identifiers", "values_json", "float_identifiers", "float_values")
    class UpdatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _any_pb2.Any
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class BinaryUpdatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ATOMIC_FIELD_NUMBER: _ClassVar[int]
    BINARY_UPDATES_FIELD_NUMBER: _ClassVar[int]
    VALUE_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    VALUES_JSON_FIELD_NUMBER: _ClassVar[int]
    FLOAT_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    updates: _containers.MessageMap[str, _any_pb2.Any]
    metadata: _containers.ScalarMap[str, str]
    atomic: bool
    binary_updates: _containers.ScalarMap[str, bytes]
    value_identifiers: _containers.RepeatedScalarFieldContainer[str]
    values_json: bytes
    float_identifiers: _containers.RepeatedScalarFieldContainer[str]
    float_values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, session_id: _Optional[str] = ..., updates: _Optional[_Mapping[str, _any_pb2.Any]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., atomic: bool = ..., binary_updates: _Optional[_Mapping[str, bytes]] = ..., value_identifiers: _Optional[_Iterable[str]] = ..., values_json: _Optional[bytes] = ..., float_identifiers: _Optional[_Iterable[str]] = ..., float_values: _Optional[_Iterable[float]] = ...) -> None: ...

class BatchSetVariablesResponse(_message.Message):
    __slots__ = ("success", "errors", "new_versions")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NewVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    errors: _containers.ScalarMap[str, str]
    new_versions: _containers.ScalarMap[str, int]
    def __init__(self, success: bool = ..., errors: _Optional[_Mapping[str, str]] = ..., new_versions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListVariablesRequest(_message.Message):
    __slots__ = ("session_id", "pattern")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    pattern: str
    def __init__(self, session_id: _Optional[str] = ..., pattern: _Optional[str] = ...) -> None: ...

class ListVariablesResponse(_message.Message):
    __slots__ = ("variables",)
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[Variable]
    def __init__(self, variables: _Optional[_Iterable[_Union[Variable, _Mapping]]] = ...) -> None: ...

class DeleteVariableRequest(_message.Message):
    __slots__ = ("session_id", "variable_identifier")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    variable_identifier: str
    def __init__(self, session_id: _Optional[str] = ..., variable_identifier: _Optional[str] = ...) -> None: ...

class DeleteVariableResponse(_message.Message):
    __slots__ = ("success", "error_message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    def __init__(self, success: bool = ..., error_message: _Optional[str] = ...) -> None: ...

class WatchVariablesRequest(_message.Message):
    __slots__ = ("session_id", "variable_identifiers", "include_initial_values", "since_versions", "patterns")
    class SinceVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INITIAL_VALUES_FIELD_NUMBER: _ClassVar[int]
    SINCE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    variable_identifiers: _containers.RepeatedScalarFieldContainer[str]
    include_initial_values: bool
    since_versions: _containers.ScalarMap[str, int]
    patterns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., variable_identifiers: _Optional[_Iterable[str]] = ..., include_initial_values: bool = ..., since_versions: _Optional[_Mapping[str, int]] = ..., patterns: _Optional[_Iterable[str]] = ...) -> None: ...

class VariableUpdate(_message.Message):
    __slots__ = ("variable_id", "variable", "update_source", "update_metadata", "timestamp", "update_type")
    class UpdateMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VARIABLE_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_METADATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TYPE_FIELD_NUMBER: _ClassVar[int]
    variable_id: str
    variable: Variable
    update_source: str
    update_metadata: _containers.ScalarMap[str, str]
    timestamp: _timestamp_pb2.Timestamp
    update_type: str
    def __init__(self, variable_id: _Optional[str] = ..., variable: _Optional[_Union[Variable, _Mapping]] = ..., update_source: _Optional[str] = ..., update_metadata: _Optional[_Mapping[str, str]] = ..., timestamp: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., update_type: _Optional[str] = ...) -> None: ...
