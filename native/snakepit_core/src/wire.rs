//! Conversions between the protobuf messages and the store's types: values in
//! `google.protobuf.Any` (JSON, or the binary path for big numeric arrays),
//! timestamps, and store errors as gRPC statuses.

use prost_types::{Any, Timestamp};
use serde_json::{Map, Number, Value as Json};
use tonic::{Code, Status};

use crate::error::StoreError;
use crate::error::{clip, clip_debug};
use crate::model::{Metadata, Source, Update, Variable};
use crate::proto;
use crate::store::Input;
use crate::value::{element_count, Raw, Tensor, Value, VarType};

/// Every `type_url` starts with this; the variable's type follows.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/snakepit.";

/// Embeddings and tensors with at least this many elements are sent on the
/// binary path (to a client that accepts it, see [`Encoding`]): 8 bytes a
/// number instead of ~20 characters of JSON.
pub const BINARY_THRESHOLD: usize = 1024;

/// Request metadata key by which a client says it reads the binary path.
pub const ACCEPT_BINARY_KEY: &str = "snakepit-accept-binary";
/// The one binary format there is, as named in [`ACCEPT_BINARY_KEY`].
pub const RAW_LE: &str = "raw_le";

/// How the values of a response are encoded: what the client asked for.
///
/// snakepit v0.4 clients do not know the binary path (they try to unpickle
/// `binary_value`), so a big embedding or tensor goes on the binary path only
/// to a client that sent the request metadata `snakepit-accept-binary:
/// raw_le`; everyone else gets every value as JSON, whatever its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Every value as JSON in the `Any`; `binary_value` stays empty.
    Json,
    /// Embeddings and tensors of [`BINARY_THRESHOLD`] elements or more on
    /// the binary path, the rest as JSON.
    Binary,
}

impl Encoding {
    /// The encoding a request asks for: [`Encoding::Binary`] when one of its
    /// `snakepit-accept-binary` metadata values, a comma-separated list, has
    /// the element `raw_le` (surrounding blanks ignored, case sensitive);
    /// otherwise [`Encoding::Json`].
    pub fn of(metadata: &tonic::metadata::MetadataMap) -> Encoding {
        let accepts = metadata
            .get_all(ACCEPT_BINARY_KEY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|format| format.trim() == RAW_LE));
        if accepts {
            Encoding::Binary
        } else {
            Encoding::Json
        }
    }
}

/// Trailing metadata key carrying [`StoreError::kind`], so clients can tell a
/// missing session from a missing variable without parsing messages.
pub const ERROR_KIND_KEY: &str = "snakepit-error-kind";
/// Trailing metadata key carrying the current version on a version conflict.
pub const CURRENT_VERSION_KEY: &str = "snakepit-current-version";

/// Longest status message sent; longer ones are cut.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// A store error as a gRPC status a person (and a client library) can act on:
/// the code, the message (cut at [`MAX_STATUS_MESSAGE_BYTES`]), and trailing
/// metadata with [`StoreError::kind`] under [`ERROR_KIND_KEY`] and, on a
/// version conflict, the current version under [`CURRENT_VERSION_KEY`].
/// Handlers return store errors with `?`.
impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        let code = match &e {
            StoreError::SessionNotFound(_) | StoreError::VariableNotFound { .. } => Code::NotFound,
            StoreError::SessionExists(_) | StoreError::VariableExists(_) => Code::AlreadyExists,
            StoreError::VersionConflict { .. } => Code::FailedPrecondition,
            StoreError::ResourceExhausted(_) => Code::ResourceExhausted,
            StoreError::InvalidArgument(_)
            | StoreError::InvalidType(_)
            | StoreError::InvalidValue(_)
            | StoreError::InvalidConstraints(_) => Code::InvalidArgument,
        };
        let mut message = e.to_string();
        // Every echo is clipped where it is made; this is the backstop that keeps
        // a status within what HTTP/2 trailers may carry.
        if message.len() > MAX_STATUS_MESSAGE_BYTES {
            let cut = (0..=MAX_STATUS_MESSAGE_BYTES).rev().find(|i| message.is_char_boundary(*i)).unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        let mut status = Status::new(code, message);
        let md = status.metadata_mut();
        md.insert(ERROR_KIND_KEY, e.kind().parse().expect("kinds are ASCII"));
        if let StoreError::VersionConflict { current, .. } = e {
            md.insert(CURRENT_VERSION_KEY, current.to_string().parse().expect("digits are ASCII"));
        }
        status
    }
}

/// Microseconds since the epoch as a protobuf timestamp.
pub fn timestamp(us: i64) -> Timestamp {
    Timestamp { seconds: us.div_euclid(1_000_000), nanos: (us.rem_euclid(1_000_000) * 1000) as i32 }
}

/// JSON as a raw value. Integers beyond i64 keep their digits as `BigInt`.
pub fn raw_from_json(json: Json) -> Raw {
    match json {
        Json::Null => Raw::Nil,
        Json::Bool(b) => Raw::Bool(b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Raw::Int(i),
            (None, _) if n.is_u64() => Raw::BigInt(n.to_string()),
            (None, Some(f)) => Raw::Float(f),
            (None, None) => Raw::BigInt(n.to_string()),
        },
        Json::String(s) => Raw::Str(s),
        Json::Array(items) => Raw::List(items.into_iter().map(raw_from_json).collect()),
        Json::Object(map) => Raw::Map(map.into_iter().map(|(k, v)| (k, raw_from_json(v))).collect()),
    }
}

/// A raw value as JSON; special floats become the strings "NaN", "Infinity", "-Infinity".
pub fn raw_to_json(raw: &Raw) -> Json {
    match raw {
        Raw::Nil => Json::Null,
        Raw::Bool(b) => Json::Bool(*b),
        Raw::Int(i) => Json::from(*i),
        Raw::BigInt(s) => Json::String(s.clone()),
        Raw::Float(x) => float_json(*x),
        Raw::Str(s) | Raw::Atom(s) => Json::String(s.clone()),
        Raw::List(items) => Json::Array(items.iter().map(raw_to_json).collect()),
        Raw::Floats(xs) => floats_json(xs),
        Raw::Map(entries) => Json::Object(entries.iter().map(|(k, v)| (k.clone(), raw_to_json(v))).collect()),
    }
}

fn float_json(x: f64) -> Json {
    match Number::from_f64(x) {
        Some(n) => Json::Number(n),
        None if x.is_nan() => Json::String("NaN".into()),
        None if x > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

fn floats_json(xs: &[f64]) -> Json {
    Json::Array(xs.iter().map(|x| float_json(*x)).collect())
}

/// Parses a `constraints_json` string; empty means no constraints.
pub fn constraints_from_json(text: &str) -> Result<Raw, StoreError> {
    if text.trim().is_empty() {
        return Ok(Raw::Nil);
    }
    serde_json::from_str(text)
        .map(raw_from_json)
        .map_err(|e| StoreError::InvalidConstraints(format!("constraints_json is not valid JSON: {e}")))
}

fn bad(msg: String) -> StoreError {
    StoreError::InvalidArgument(msg)
}

/// Decodes a value sent for a variable of type `ty`; `type_url` must name `ty`.
pub fn decode_value(ty: VarType, any: Option<&Any>, binary: &[u8]) -> Result<Raw, StoreError> {
    let (named, raw) = decode_any(any, binary)?;
    if named != ty {
        return Err(bad(format!(
            "type_url names type {:?} but the variable is of type {:?}",
            named.as_str(),
            ty.as_str()
        )));
    }
    Ok(raw)
}

/// Decodes a value and the type its `type_url` names: the JSON, or on the
/// binary path the metadata and the raw little-endian numbers in `binary`.
pub fn decode_any(any: Option<&Any>, binary: &[u8]) -> Result<(VarType, Raw), StoreError> {
    let any = any.ok_or_else(|| bad("a value is required".into()))?;
    let named = any
        .type_url
        .strip_prefix(TYPE_URL_PREFIX)
        .ok_or_else(|| bad(format!("type_url {} must start with {TYPE_URL_PREFIX:?}", clip(&any.type_url))))?;
    let (named_type, is_binary) = match named.strip_suffix(".binary") {
        Some(t) => (t, true),
        None => (named, false),
    };
    let ty =
        VarType::parse(named_type).map_err(|_| bad(format!("type_url {} names no known type", clip(&any.type_url))))?;
    let json: Json =
        serde_json::from_slice(&any.value).map_err(|e| bad(format!("value is not valid UTF-8 JSON: {e}")))?;
    if !is_binary {
        if !binary.is_empty() {
            return Err(bad("binary data was sent but type_url does not end in \".binary\"".into()));
        }
        return Ok((ty, raw_from_json(json)));
    }
    if !ty.is_numeric_array() {
        return Err(bad(format!("the binary path is for embedding and tensor, not {ty}")));
    }
    Ok((ty, decode_binary(ty, &json, binary)?))
}

/// The compact forms of a batch set: `identifiers[i]` gets element `i` of the
/// JSON array `values_json`, `float_identifiers[i]` gets `floats[i]`; each value
/// typed by its variable (nothing declared). Empty lists are no updates;
/// anything malformed is an error for the whole request, before any value is
/// applied.
pub fn compact_updates(
    identifiers: Vec<String>,
    values_json: &[u8],
    float_identifiers: Vec<String>,
    floats: Vec<f64>,
) -> Result<Vec<(String, Input)>, StoreError> {
    if floats.len() != float_identifiers.len() {
        return Err(bad(format!(
            "float_values has {} values for {} float_identifiers",
            floats.len(),
            float_identifiers.len()
        )));
    }
    let values: Vec<Json> = if identifiers.is_empty() && values_json.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(values_json).map_err(|e| bad(format!("values_json must be a JSON array: {e}")))?
    };
    if values.len() != identifiers.len() {
        return Err(bad(format!(
            "values_json has {} values for {} value_identifiers",
            values.len(),
            identifiers.len()
        )));
    }
    let json = identifiers.into_iter().zip(values).map(|(key, json)| (key, Input::from(raw_from_json(json))));
    let floats = float_identifiers.into_iter().zip(floats).map(|(key, x)| (key, Input::from(Raw::Float(x))));
    Ok(json.chain(floats).collect())
}

fn decode_binary(ty: VarType, meta: &Json, bytes: &[u8]) -> Result<Raw, StoreError> {
    let format = meta.get("binary_format").and_then(Json::as_str).unwrap_or("raw_le");
    if format != "raw_le" {
        return Err(bad(format!("binary_format {} is not supported; only \"raw_le\" is", clip(format))));
    }
    let dtype = meta.get("dtype").and_then(Json::as_str).unwrap_or("float64");
    let width = match dtype {
        "float64" => 8,
        "float32" => 4,
        other => return Err(bad(format!("dtype {} is not supported; use float32 or float64", clip(other)))),
    };
    let shape = match meta.get("shape") {
        Some(s) => crate::value::parse_shape(&raw_from_json(s.clone()), "binary shape").map_err(bad)?,
        None if ty == VarType::Embedding => vec![bytes.len() / width],
        None => return Err(bad("binary tensor metadata must carry a shape".into())),
    };
    let count = element_count(&shape)?;
    if count.checked_mul(width) != Some(bytes.len()) {
        return Err(bad(format!(
            "binary value has {} bytes but shape {} of {dtype} needs {}",
            bytes.len(),
            clip_debug(&shape),
            count.saturating_mul(width)
        )));
    }
    let data: Vec<f64> = if width == 8 {
        bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    } else {
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64).collect()
    };
    Ok(match ty {
        VarType::Embedding if shape.len() == 1 => Raw::Floats(data),
        VarType::Embedding => {
            return Err(bad(format!("an embedding is one-dimensional, got shape {}", clip_debug(&shape))))
        }
        _ => Raw::Map(vec![
            ("shape".into(), Raw::List(shape.iter().map(|d| Raw::Int(*d as i64)).collect())),
            ("data".into(), Raw::Floats(data)),
        ]),
    })
}

/// The plain `type_url` of each type, so encoding a value formats nothing.
fn type_url(ty: VarType) -> &'static str {
    match ty {
        VarType::Float => "type.googleapis.com/snakepit.float",
        VarType::Integer => "type.googleapis.com/snakepit.integer",
        VarType::String => "type.googleapis.com/snakepit.string",
        VarType::Boolean => "type.googleapis.com/snakepit.boolean",
        VarType::Choice => "type.googleapis.com/snakepit.choice",
        VarType::Module => "type.googleapis.com/snakepit.module",
        VarType::Embedding => "type.googleapis.com/snakepit.embedding",
        VarType::Tensor => "type.googleapis.com/snakepit.tensor",
    }
}

/// Whether `value` travels on the binary path rather than as JSON, sent with
/// `encoding`.
pub fn is_binary(value: &Value, encoding: Encoding) -> bool {
    match value {
        _ if encoding == Encoding::Json => false,
        Value::Embedding(v) => v.len() >= BINARY_THRESHOLD,
        Value::Tensor(t) => t.data.len() >= BINARY_THRESHOLD,
        _ => false,
    }
}

/// Appends `value`'s JSON (what a JSON-path `Any` carries) to `out`.
pub fn write_json(value: &Value, out: &mut Vec<u8>) {
    // Scalars are the common case: written without building a JSON tree.
    let written = match value {
        Value::Float(x) if x.is_finite() => serde_json::to_writer(&mut *out, x),
        Value::Integer(i) => serde_json::to_writer(&mut *out, i),
        Value::Boolean(b) => serde_json::to_writer(&mut *out, b),
        Value::Text(t) => serde_json::to_writer(&mut *out, t),
        Value::Float(x) => serde_json::to_writer(&mut *out, &float_json(*x)),
        Value::Embedding(v) => serde_json::to_writer(&mut *out, &floats_json(v)),
        Value::Tensor(Tensor { shape, data }) => {
            let mut m = Map::new();
            m.insert("shape".into(), Json::from(shape.clone()));
            m.insert("data".into(), floats_json(data));
            serde_json::to_writer(&mut *out, &Json::Object(m))
        }
    };
    written.expect("JSON values always serialize into a Vec");
}

/// Encodes a value as an `Any` plus, on the binary path (only ever with
/// [`Encoding::Binary`]), its raw bytes.
pub fn encode_value(ty: VarType, value: &Value, encoding: Encoding) -> (Any, Vec<u8>) {
    let binary = |shape: &[usize], data: &[f64]| {
        let meta = serde_json::json!({"shape": shape, "dtype": "float64", "binary_format": "raw_le"});
        let any = Any {
            type_url: format!("{TYPE_URL_PREFIX}{}.binary", ty.as_str()),
            value: serde_json::to_vec(&meta).expect("JSON values always serialize"),
        };
        (any, data.iter().flat_map(|x| x.to_le_bytes()).collect())
    };
    match value {
        Value::Embedding(v) if is_binary(value, encoding) => binary(&[v.len()], v),
        Value::Tensor(Tensor { shape, data }) if is_binary(value, encoding) => binary(shape, data),
        _ => {
            let mut json = Vec::new();
            write_json(value, &mut json);
            (Any { type_url: type_url(ty).to_string(), value: json }, Vec::new())
        }
    }
}

/// A batch get's found variables in the compact `values_only` form: into
/// [`proto::BatchValues`] go the values of floats as packed doubles and the
/// other JSON-path values as one JSON array; binary-path ones (only with
/// [`Encoding::Binary`]) go into the map as full messages. With
/// [`Encoding::Json`] big arrays are elements of the JSON array like any other.
pub fn batch_values(
    found: Vec<(String, Variable)>,
    include_metadata: bool,
    encoding: Encoding,
) -> (proto::BatchValues, std::collections::HashMap<String, proto::Variable>) {
    let n = found.len();
    let mut values = proto::BatchValues {
        identifiers: Vec::with_capacity(n),
        ids: Vec::with_capacity(n),
        names: Vec::with_capacity(n),
        types: Vec::with_capacity(n),
        versions: Vec::with_capacity(n),
        values_json: Vec::new(),
        floats: Vec::new(),
    };
    values.values_json.push(b'[');
    let mut binary = std::collections::HashMap::new();
    for (key, v) in found {
        if is_binary(&v.value, encoding) {
            binary.insert(key, variable_with(&v, include_metadata, encoding));
            continue;
        }
        match *v.value {
            Value::Float(x) => values.floats.push(x),
            ref other => {
                if values.values_json.len() > 1 {
                    values.values_json.push(b',');
                }
                write_json(other, &mut values.values_json);
            }
        }
        values.identifiers.push(key);
        values.ids.push(String::from(&*v.id));
        values.names.push(String::from(&*v.name));
        values.types.push(v.ty.as_str().to_string());
        values.versions.push(v.version);
    }
    values.values_json.push(b']');
    (values, binary)
}

/// The proto enum value of a source.
pub fn source(s: Source) -> proto::variable::Source {
    match s {
        Source::Elixir => proto::variable::Source::Elixir,
        Source::Python => proto::variable::Source::Python,
    }
}

/// A variable snapshot as its protobuf message.
pub fn variable(v: &Variable, encoding: Encoding) -> proto::Variable {
    variable_with(v, true, encoding)
}

/// A variable snapshot as its protobuf message; without `include_metadata`,
/// `constraints_json` and `metadata` stay empty (batch reads that only want
/// values ask for that, and it halves what is encoded and parsed).
pub fn variable_with(v: &Variable, include_metadata: bool, encoding: Encoding) -> proto::Variable {
    let (value, binary_value) = encode_value(v.ty, &v.value, encoding);
    let (constraints_json, metadata) = if include_metadata {
        (raw_to_json(&v.constraints.to_raw()).to_string(), self::metadata(&v.metadata))
    } else {
        (String::new(), std::collections::HashMap::new())
    };
    proto::Variable {
        id: String::from(&*v.id),
        name: String::from(&*v.name),
        r#type: v.ty.as_str().to_string(),
        value: Some(value),
        constraints_json,
        metadata,
        source: source(v.source) as i32,
        last_updated_at: Some(timestamp(v.updated_at_us)),
        version: v.version,
        binary_value,
    }
}

/// A watch update as its protobuf message.
pub fn update(u: &Update, encoding: Encoding) -> proto::VariableUpdate {
    proto::VariableUpdate {
        variable_id: u.variable.as_ref().map(|v| String::from(&*v.id)).unwrap_or_default(),
        variable: u.variable.as_ref().map(|v| variable(v, encoding)),
        update_source: u.source.as_str().to_string(),
        update_metadata: metadata(&u.metadata),
        timestamp: Some(timestamp(u.at_us)),
        update_type: u.kind.as_str().to_string(),
    }
}

/// A `VariableUpdate` already encoded: what a WatchVariables stream sends
/// (build.rs maps the message to this type on the server side only). The
/// bytes are those of [`update`]'s message, so the wire is unchanged; one
/// update going to many streams is encoded once (see [`encoded_update`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedUpdate(pub prost::bytes::Bytes);

impl prost::Message for EncodedUpdate {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    // The server never decodes one; fields are skipped, as for unknown ones.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = prost::bytes::Bytes::new();
    }
}

/// [`update`], encoded: made once per update and encoding, then shared by
/// every stream that sends the same update.
pub fn encoded_update(u: &Update, encoding: Encoding) -> EncodedUpdate {
    let slot = match encoding {
        Encoding::Json => 0,
        Encoding::Binary => 1,
    };
    EncodedUpdate(u.wire.get_or_init(slot, || prost::Message::encode_to_vec(&update(u, encoding)).into()))
}

/// Store metadata as a protobuf map.
pub fn metadata(m: &Metadata) -> std::collections::HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::normalize;

    fn any(ty: &str, json: &str) -> Any {
        Any { type_url: format!("{TYPE_URL_PREFIX}{ty}"), value: json.as_bytes().to_vec() }
    }

    fn round_trip(ty: VarType, value: Value) -> Value {
        let (a, bin) = encode_value(ty, &value, Encoding::Binary);
        let json = round_trip_json(ty, value);
        let back = normalize(ty, decode_value(ty, Some(&a), &bin).unwrap()).unwrap();
        assert!(json == back || matches!(json, Value::Float(x) if x.is_nan()), "{json:?} vs {back:?}");
        back
    }

    fn round_trip_json(ty: VarType, value: Value) -> Value {
        let (a, bin) = encode_value(ty, &value, Encoding::Json);
        assert!(bin.is_empty() && !a.type_url.ends_with(".binary"));
        normalize(ty, decode_value(ty, Some(&a), &bin).unwrap()).unwrap()
    }

    #[test]
    fn every_type_round_trips_through_any() {
        let cases = [
            (VarType::Float, Value::Float(0.25)),
            (VarType::Float, Value::Float(f64::INFINITY)),
            (VarType::Float, Value::Float(f64::NEG_INFINITY)),
            (VarType::Integer, Value::Integer(i64::MAX)),
            (VarType::String, Value::Text("héllo \"q\"".into())),
            (VarType::Boolean, Value::Boolean(false)),
            (VarType::Choice, Value::Text("beam".into())),
            (VarType::Module, Value::Text("Elixir.Foo".into())),
            (VarType::Embedding, Value::Embedding(vec![1.0, -2.5])),
            (VarType::Embedding, Value::Embedding((0..2000).map(|i| i as f64).collect())),
            (VarType::Tensor, Value::Tensor(Tensor { shape: vec![2, 1], data: vec![1.0, 2.0] })),
            (VarType::Tensor, Value::Tensor(Tensor { shape: vec![32, 32], data: vec![0.5; 1024] })),
        ];
        for (ty, v) in cases {
            assert_eq!(round_trip(ty, v.clone()), v, "{ty}");
        }
        match round_trip(VarType::Float, Value::Float(f64::NAN)) {
            Value::Float(x) => assert!(x.is_nan()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn special_floats_travel_as_json_strings() {
        let (a, _) = encode_value(VarType::Float, &Value::Float(f64::NAN), Encoding::Binary);
        assert_eq!(a.value, b"\"NaN\"");
        assert_eq!(a.type_url, "type.googleapis.com/snakepit.float");
    }

    #[test]
    fn big_arrays_take_the_binary_path() {
        let (a, bin) = encode_value(VarType::Embedding, &Value::Embedding(vec![1.0; 1024]), Encoding::Binary);
        assert_eq!(a.type_url, "type.googleapis.com/snakepit.embedding.binary");
        assert_eq!(bin.len(), 8 * 1024);
        let (a, bin) = encode_value(VarType::Embedding, &Value::Embedding(vec![1.0; 1023]), Encoding::Binary);
        assert!(!a.type_url.ends_with(".binary") && bin.is_empty());
    }

    #[test]
    fn without_binary_big_arrays_are_json() {
        let (a, bin) = encode_value(VarType::Embedding, &Value::Embedding(vec![0.5; 5000]), Encoding::Json);
        assert_eq!(a.type_url, "type.googleapis.com/snakepit.embedding");
        assert!(bin.is_empty());
        assert_eq!(serde_json::from_slice::<Vec<f64>>(&a.value).unwrap(), vec![0.5; 5000]);
        let t = Value::Tensor(Tensor { shape: vec![3, 2000], data: vec![1.0; 6000] });
        let (a, bin) = encode_value(VarType::Tensor, &t, Encoding::Json);
        assert_eq!(a.type_url, "type.googleapis.com/snakepit.tensor");
        assert!(bin.is_empty());
        let json: Json = serde_json::from_slice(&a.value).unwrap();
        assert_eq!(json["shape"], serde_json::json!([3, 2000]));
        assert_eq!(json["data"].as_array().unwrap().len(), 6000);
    }

    #[test]
    fn only_the_accept_header_turns_the_binary_path_on() {
        let with = |values: &[&str]| {
            let mut md = tonic::metadata::MetadataMap::new();
            for v in values {
                md.append(ACCEPT_BINARY_KEY, v.parse().unwrap());
            }
            Encoding::of(&md)
        };
        assert_eq!(with(&[]), Encoding::Json);
        assert_eq!(with(&["raw_le"]), Encoding::Binary);
        assert_eq!(with(&["other, raw_le "]), Encoding::Binary);
        assert_eq!(with(&["other", "raw_le"]), Encoding::Binary);
        assert_eq!(with(&["RAW_LE"]), Encoding::Json);
        assert_eq!(with(&["raw_le_v2", "pickle"]), Encoding::Json);
        assert_eq!(with(&[""]), Encoding::Json);
    }

    #[test]
    fn float32_binary_input_is_accepted() {
        let bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let a = any("embedding.binary", r#"{"shape":[2],"dtype":"float32","binary_format":"raw_le"}"#);
        assert_eq!(decode_value(VarType::Embedding, Some(&a), &bytes).unwrap(), Raw::Floats(vec![1.5, -2.0]));
    }

    #[test]
    fn malformed_values_are_invalid_arguments() {
        let cases: Vec<(VarType, Option<Any>, Vec<u8>, &str)> = vec![
            (VarType::Float, None, vec![], "a value is required"),
            (VarType::Float, Some(any("integer", "1")), vec![], "names type \"integer\""),
            (VarType::Float, Some(Any { type_url: "x/y".into(), value: b"1".to_vec() }), vec![], "must start with"),
            (VarType::Float, Some(any("decimal", "1")), vec![], "names no known type"),
            (VarType::Float, Some(any("float", "{oops")), vec![], "not valid UTF-8 JSON"),
            (VarType::Float, Some(any("float", "1")), vec![1], "does not end in \".binary\""),
            (VarType::Float, Some(any("float.binary", "{}")), vec![], "for embedding and tensor"),
            (
                VarType::Embedding,
                Some(any("embedding.binary", r#"{"shape":[1],"binary_format":"pickle"}"#)),
                vec![0; 8],
                "\"pickle\" is not supported",
            ),
            (
                VarType::Embedding,
                Some(any("embedding.binary", r#"{"shape":[2],"dtype":"float64"}"#)),
                vec![0; 8],
                "has 8 bytes",
            ),
            (
                VarType::Embedding,
                Some(any("embedding.binary", r#"{"shape":[1],"dtype":"int8"}"#)),
                vec![0],
                "dtype \"int8\"",
            ),
            (VarType::Tensor, Some(any("tensor.binary", r#"{"dtype":"float64"}"#)), vec![], "must carry a shape"),
        ];
        for (ty, a, bin, want) in cases {
            let e = decode_value(ty, a.as_ref(), &bin).expect_err(want);
            assert_eq!(e.kind(), "invalid_argument");
            assert!(e.to_string().contains(want), "{e} should contain {want}");
        }
    }

    #[test]
    fn json_numbers_keep_their_kind() {
        assert_eq!(raw_from_json(serde_json::json!(3)), Raw::Int(3));
        assert_eq!(raw_from_json(serde_json::json!(3.0)), Raw::Float(3.0));
        assert_eq!(raw_from_json(serde_json::json!(u64::MAX)), Raw::BigInt(u64::MAX.to_string()));
    }

    #[test]
    fn echoed_input_is_clipped() {
        let long = "x".repeat(1 << 20);
        let e = decode_any(Some(&Any { type_url: long.clone(), value: b"1".to_vec() }), &[]).unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
        let s = Status::from(StoreError::InvalidValue(long));
        assert!(s.message().len() <= MAX_STATUS_MESSAGE_BYTES + 3);
        let s = Status::from(StoreError::SessionNotFound("y".repeat(1 << 20)));
        assert!(s.message().len() < 400 && s.message().contains("1048576 bytes in all"), "{}", s.message());
    }

    #[test]
    fn integers_below_the_64_bit_range_do_not_saturate() {
        let raw = raw_from_json(serde_json::from_str("-9223372036854775809").unwrap());
        assert!(crate::value::normalize(VarType::Integer, raw).is_err());
        let raw = raw_from_json(serde_json::from_str("-9223372036854775808").unwrap());
        assert_eq!(crate::value::normalize(VarType::Integer, raw).unwrap(), Value::Integer(i64::MIN));
    }

    #[test]
    fn statuses_carry_code_and_kind() {
        let s = Status::from(StoreError::VersionConflict { expected: 1, current: 4 });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.metadata().get(ERROR_KIND_KEY).unwrap(), "version_conflict");
        assert_eq!(s.metadata().get(CURRENT_VERSION_KEY).unwrap(), "4");
        assert_eq!(Status::from(StoreError::SessionNotFound("s".into())).code(), Code::NotFound);
        assert_eq!(Status::from(StoreError::InvalidValue("v".into())).code(), Code::InvalidArgument);
    }

    #[test]
    fn timestamps_split_seconds_and_nanos() {
        assert_eq!(timestamp(1_500_000), Timestamp { seconds: 1, nanos: 500_000_000 });
        assert_eq!(timestamp(-1), Timestamp { seconds: -1, nanos: 999_999_000 });
    }

    /// A watch stream sends the same bytes as the message of `update`, once
    /// encoded per encoding and shared; a clone of the update starts afresh.
    #[test]
    fn an_encoded_update_is_the_update_message_made_once() {
        use crate::model::{Update, UpdateKind, Variable};
        use prost::Message;
        let floats: Vec<f64> = (0..2000).map(f64::from).collect();
        let u = Update {
            kind: UpdateKind::ValueChange,
            variable: Some(Variable {
                id: "v1".into(),
                name: "emb".into(),
                ty: VarType::Embedding,
                value: std::sync::Arc::new(Value::Embedding(floats)),
                constraints: Default::default(),
                metadata: Default::default(),
                version: 3,
                source: Source::Python,
                created_at_us: 1,
                updated_at_us: 2,
            }),
            source: Source::Python,
            metadata: std::sync::Arc::new([("k".to_string(), "v".to_string())].into()),
            at_us: 2,
            batch: None,
            wire: Default::default(),
        };
        for encoding in [Encoding::Json, Encoding::Binary] {
            let first = encoded_update(&u, encoding);
            assert_eq!(first.0, update(&u, encoding).encode_to_vec());
            assert_eq!(first.encoded_len(), first.0.len());
            // The second stream gets the very same bytes, not a new encoding.
            assert_eq!(encoded_update(&u, encoding).0.as_ptr(), first.0.as_ptr());
        }
        assert_ne!(encoded_update(&u, Encoding::Json).0, encoded_update(&u, Encoding::Binary).0);
        let mut changed = u.clone();
        changed.kind = UpdateKind::InitialValue;
        assert_eq!(encoded_update(&changed, Encoding::Json).0, update(&changed, Encoding::Json).encode_to_vec());
    }
}
