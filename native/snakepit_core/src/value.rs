//! Variable types, the raw values the doors hand in, and the typed values the
//! store keeps.
//!
//! Every door (Elixir terms, JSON from gRPC, the binary path) first turns its
//! input into a [`Raw`]; [`normalize`] then gives it meaning under a
//! [`VarType`]. That is the one place where "an integer becomes a float" or
//! "`3.5` is not an integer" is decided, so all doors get the same verdicts.

use std::fmt;

use crate::error::{clip, clip_debug};
use crate::error::{Result, StoreError};
use crate::limits::JSON_BYTES_PER_NUMBER;

/// The eight variable types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VarType {
    Float,
    Integer,
    String,
    Boolean,
    Choice,
    Module,
    Embedding,
    Tensor,
}

impl VarType {
    /// Every type, in a stable order.
    pub const ALL: [VarType; 8] = [
        VarType::Float,
        VarType::Integer,
        VarType::String,
        VarType::Boolean,
        VarType::Choice,
        VarType::Module,
        VarType::Embedding,
        VarType::Tensor,
    ];

    /// The lowercase name used on the wire and in Elixir atoms.
    pub fn as_str(self) -> &'static str {
        match self {
            VarType::Float => "float",
            VarType::Integer => "integer",
            VarType::String => "string",
            VarType::Boolean => "boolean",
            VarType::Choice => "choice",
            VarType::Module => "module",
            VarType::Embedding => "embedding",
            VarType::Tensor => "tensor",
        }
    }

    /// Parses a type name; an unknown one is `InvalidType` listing the known ones.
    pub fn parse(name: &str) -> Result<VarType> {
        VarType::ALL.into_iter().find(|t| t.as_str() == name).ok_or_else(|| {
            StoreError::InvalidType(format!(
                "unknown variable type {} (known: float, integer, string, boolean, \
                     choice, module, embedding, tensor)",
                clip(name)
            ))
        })
    }

    /// Whether values of this type are lists of numbers that may take the binary path.
    pub fn is_numeric_array(self) -> bool {
        matches!(self, VarType::Embedding | VarType::Tensor)
    }
}

impl fmt::Display for VarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value as a door received it, before a type gives it meaning.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Nil,
    Bool(bool),
    Int(i64),
    /// An integer outside the 64-bit range, kept as its decimal text.
    BigInt(String),
    Float(f64),
    Str(String),
    /// An Elixir atom other than `nil`, `true` and `false`.
    Atom(String),
    List(Vec<Raw>),
    /// Numbers that arrived packed (the binary path); saves a `Raw` per element.
    Floats(Vec<f64>),
    /// Keys as text: Elixir atom keys arrive as their names.
    Map(Vec<(String, Raw)>),
}

impl Raw {
    /// The value under `key` in a map, if this is a map that has it.
    pub fn get(&self, key: &str) -> Option<&Raw> {
        match self {
            Raw::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short description for error messages: what was received.
    pub fn describe(&self) -> String {
        match self {
            Raw::Nil => "nil".to_string(),
            Raw::Bool(b) => format!("the boolean {b}"),
            Raw::Int(i) => format!("the integer {i}"),
            Raw::BigInt(s) => format!("the integer {s}"),
            Raw::Float(x) => format!("the float {}", fmt_float(*x)),
            Raw::Str(s) => format!("the string {}", truncated(s)),
            Raw::Atom(a) => format!("the atom :{a}"),
            Raw::List(_) | Raw::Floats(_) => "a list".to_string(),
            Raw::Map(_) => "a map".to_string(),
        }
    }
}

fn truncated(s: &str) -> String {
    const LIMIT: usize = 40;
    if s.chars().count() <= LIMIT {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(LIMIT).collect();
        format!("{head:?}…")
    }
}

/// Formats a float so that whole numbers keep a decimal point ("1.0", not "1").
pub fn fmt_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// A tensor: its shape and its elements in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// A value that has passed its type's rules.
///
/// `string`, `choice` and `module` all hold `Text`; the variable's type tells
/// them apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Float(f64),
    Integer(i64),
    Text(String),
    Boolean(bool),
    Embedding(Vec<f64>),
    Tensor(Tensor),
}

impl Value {
    /// Roughly how much work copying this value out is, in list elements: 1
    /// for a scalar, the element count for arrays, a 64-byte unit for text.
    pub fn weight(&self) -> usize {
        match self {
            Value::Embedding(v) => v.len(),
            Value::Tensor(t) => t.data.len() + t.shape.len(),
            Value::Text(s) => 1 + s.len() / 64,
            _ => 1,
        }
    }
}

impl Value {
    /// The size of this value's JSON form, the largest form it travels in:
    /// what [`crate::limits::Limits::max_value_bytes`] measures. Exact for
    /// text; numbers count [`JSON_BYTES_PER_NUMBER`] each, their longest form.
    pub fn json_bytes(&self) -> usize {
        match self {
            Value::Text(s) => json_string_bytes(s),
            Value::Embedding(v) => 2 + v.len().saturating_mul(JSON_BYTES_PER_NUMBER),
            Value::Tensor(t) => {
                let numbers = t.data.len().saturating_add(t.shape.len());
                32usize.saturating_add(numbers.saturating_mul(JSON_BYTES_PER_NUMBER))
            }
            _ => JSON_BYTES_PER_NUMBER,
        }
    }
}

/// The length of `s` as a JSON string: quotes, and escapes for `"`, `\\` and
/// control characters (6 bytes as `\\u00XX`, 2 for the short forms).
pub fn json_string_bytes(s: &str) -> usize {
    let escapes: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    s.len() + escapes + 2
}

impl Raw {
    /// This raw value's size as JSON, measured like [`Value::json_bytes`]:
    /// strings exactly, numbers at their longest form. Counted without
    /// building anything, so a door can refuse a huge input cheaply.
    pub fn json_bytes(&self) -> usize {
        match self {
            Raw::Str(s) | Raw::Atom(s) => json_string_bytes(s),
            Raw::BigInt(s) => s.len() + 2,
            Raw::List(items) => items.iter().fold(2usize, |n, i| n.saturating_add(i.json_bytes())),
            Raw::Floats(v) => v.len().saturating_mul(JSON_BYTES_PER_NUMBER).saturating_add(2),
            Raw::Map(entries) => entries
                .iter()
                .fold(2usize, |n, (k, v)| n.saturating_add(json_string_bytes(k) + 1).saturating_add(v.json_bytes())),
            Raw::Nil | Raw::Bool(_) | Raw::Int(_) | Raw::Float(_) => JSON_BYTES_PER_NUMBER,
        }
    }
}

/// Names accepted for the special floats: the JSON forms and the Elixir atoms.
fn special_float(name: &str) -> Option<f64> {
    match name {
        "NaN" | "nan" => Some(f64::NAN),
        "Infinity" | "infinity" => Some(f64::INFINITY),
        "-Infinity" | "negative_infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

fn invalid(ty: VarType, raw: &Raw) -> StoreError {
    StoreError::InvalidValue(format!("expected {}, got {}", expected(ty), raw.describe()))
}

fn expected(ty: VarType) -> &'static str {
    match ty {
        VarType::Float => "a float (a number, NaN, Infinity or -Infinity)",
        VarType::Integer => "an integer",
        VarType::String => "a string",
        VarType::Boolean => "a boolean",
        VarType::Choice => "a choice (a string)",
        VarType::Module => "a module name (a string)",
        VarType::Embedding => "an embedding (a list of numbers)",
        VarType::Tensor => "a tensor (a map with shape and data)",
    }
}

/// Turns a raw value into a value of type `ty`, or says why it cannot.
/// Constraints are checked separately, by [`crate::constraints::Constraints::check`].
pub fn normalize(ty: VarType, raw: Raw) -> Result<Value> {
    match ty {
        VarType::Float => to_f64(&raw).map(Value::Float).ok_or_else(|| invalid(ty, &raw)),
        VarType::Integer => to_i64(&raw).map(Value::Integer),
        VarType::Boolean => match raw {
            Raw::Bool(b) => Ok(Value::Boolean(b)),
            other => Err(invalid(ty, &other)),
        },
        VarType::String | VarType::Choice | VarType::Module => match raw {
            Raw::Str(s) | Raw::Atom(s) => Ok(Value::Text(s)),
            other => Err(invalid(ty, &other)),
        },
        VarType::Embedding => match raw {
            Raw::Floats(v) => Ok(Value::Embedding(v)),
            Raw::List(items) => numbers(&items, "embedding").map(Value::Embedding),
            other => Err(invalid(ty, &other)),
        },
        VarType::Tensor => to_tensor(&raw).map(Value::Tensor),
    }
}

/// A number as f64: ints widen, special-float names map to NaN and the infinities.
fn to_f64(raw: &Raw) -> Option<f64> {
    match raw {
        Raw::Float(x) => Some(*x),
        Raw::Int(i) => Some(*i as f64),
        Raw::BigInt(s) => s.parse().ok(),
        Raw::Str(s) | Raw::Atom(s) => special_float(s),
        _ => None,
    }
}

fn to_i64(raw: &Raw) -> Result<i64> {
    match raw {
        Raw::Int(i) => Ok(*i),
        Raw::Float(x) => {
            // 2^63 is exactly representable; anything at or above it overflows i64.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if !x.is_finite() || x.fract() != 0.0 {
                Err(StoreError::InvalidValue(format!(
                    "expected an integer, got {} which is not a whole number",
                    fmt_float(*x)
                )))
            } else if *x >= LIMIT || *x <= -LIMIT {
                // -2^63 itself fits, but as a float it is also what every
                // JSON integer just below it rounds to; refusing it treats
                // both ends of the range alike instead of saturating.
                Err(StoreError::InvalidValue(format!("integer {} is outside the 64-bit range", fmt_float(*x))))
            } else {
                Ok(*x as i64)
            }
        }
        Raw::BigInt(s) => Err(StoreError::InvalidValue(format!("integer {s} is outside the 64-bit range"))),
        other => Err(invalid(VarType::Integer, other)),
    }
}

fn numbers(items: &[Raw], what: &str) -> Result<Vec<f64>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            to_f64(item).ok_or_else(|| {
                StoreError::InvalidValue(format!("{what} element {i} must be a number, got {}", item.describe()))
            })
        })
        .collect()
}

fn to_tensor(raw: &Raw) -> Result<Tensor> {
    let (Some(shape), Some(data)) = (raw.get("shape"), raw.get("data")) else {
        return Err(invalid(VarType::Tensor, raw));
    };
    let shape = parse_shape(shape, "tensor shape").map_err(StoreError::InvalidValue)?;
    let expected_len = element_count(&shape)?;
    let flat = match data {
        Raw::Floats(v) => v.clone(),
        Raw::List(items) => {
            // Grown from the data actually present, never reserved from the
            // shape: a shape is a claim, and [2^40] must not allocate 8 TiB.
            let mut out = Vec::new();
            flatten(items, &shape, 0, &mut out)?;
            out
        }
        other => {
            return Err(StoreError::InvalidValue(format!(
                "tensor data must be a list of numbers, got {}",
                other.describe()
            )))
        }
    };
    if flat.len() != expected_len {
        return Err(StoreError::InvalidValue(format!(
            "tensor data has {} elements but shape {} needs {}",
            flat.len(),
            clip_debug(&shape),
            expected_len
        )));
    }
    Ok(Tensor { shape, data: flat })
}

/// Parses a list of non-negative integers (a shape); the error names `what`.
pub fn parse_shape(raw: &Raw, what: &str) -> std::result::Result<Vec<usize>, String> {
    let Raw::List(dims) = raw else {
        return Err(format!("{what} must be a list of non-negative integers, got {}", raw.describe()));
    };
    dims.iter()
        .map(|d| match d {
            Raw::Int(i) if *i >= 0 => Ok(*i as usize),
            other => Err(format!("{what} must be a list of non-negative integers, got {} in it", other.describe())),
        })
        .collect()
}

/// The number of elements a shape holds, refusing shapes whose product overflows.
pub fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| StoreError::InvalidValue(format!("tensor shape {} holds too many elements", clip_debug(shape))))
}

/// Flattens `items`: either already flat numbers, or nested lists that follow `shape`.
fn flatten(items: &[Raw], shape: &[usize], depth: usize, out: &mut Vec<f64>) -> Result<()> {
    let nested = items.iter().any(|i| matches!(i, Raw::List(_) | Raw::Floats(_)));
    if !nested {
        out.extend(numbers(items, "tensor data")?);
        return Ok(());
    }
    let want = shape.get(depth).copied();
    if want != Some(items.len()) || depth + 1 >= shape.len() {
        return Err(StoreError::InvalidValue(format!(
            "tensor data nesting does not match shape {} at depth {depth}",
            clip_debug(shape)
        )));
    }
    for item in items {
        match item {
            Raw::List(inner) => {
                if inner.len() != shape[depth + 1] {
                    return Err(StoreError::InvalidValue(format!(
                        "tensor data nesting does not match shape {} at depth {}",
                        clip_debug(shape),
                        depth + 1
                    )));
                }
                flatten(inner, shape, depth + 1, out)?
            }
            Raw::Floats(v) if depth + 2 == shape.len() && v.len() == shape[depth + 1] => out.extend_from_slice(v),
            other => {
                return Err(StoreError::InvalidValue(format!(
                    "tensor data nesting does not match shape {}: found {} at depth {}",
                    clip_debug(shape),
                    other.describe(),
                    depth + 1
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ty: VarType, raw: Raw) -> Value {
        normalize(ty, raw).expect("should normalize")
    }

    fn err(ty: VarType, raw: Raw) -> String {
        normalize(ty, raw).expect_err("should be refused").to_string()
    }

    #[test]
    fn every_type_name_round_trips() {
        for t in VarType::ALL {
            assert_eq!(VarType::parse(t.as_str()).unwrap(), t);
        }
        let e = VarType::parse("decimal").unwrap_err();
        assert_eq!(e.kind(), "invalid_type");
        assert!(e.to_string().contains("\"decimal\""));
    }

    #[test]
    fn float_accepts_integers_and_special_values() {
        assert_eq!(ok(VarType::Float, Raw::Int(3)), Value::Float(3.0));
        assert_eq!(ok(VarType::Float, Raw::Float(0.5)), Value::Float(0.5));
        assert_eq!(ok(VarType::Float, Raw::Str("Infinity".into())), Value::Float(f64::INFINITY));
        assert_eq!(ok(VarType::Float, Raw::Atom("negative_infinity".into())), Value::Float(f64::NEG_INFINITY));
        match ok(VarType::Float, Raw::Atom("nan".into())) {
            Value::Float(x) => assert!(x.is_nan()),
            other => panic!("{other:?}"),
        }
        assert!(err(VarType::Float, Raw::Str("1.5".into())).contains("expected a float"));
        assert!(err(VarType::Float, Raw::Nil).contains("got nil"));
        assert!(err(VarType::Float, Raw::Bool(true)).contains("boolean"));
    }

    #[test]
    fn integer_accepts_whole_floats_only() {
        assert_eq!(ok(VarType::Integer, Raw::Float(3.0)), Value::Integer(3));
        assert_eq!(ok(VarType::Integer, Raw::Int(i64::MIN)), Value::Integer(i64::MIN));
        assert!(err(VarType::Integer, Raw::Float(3.5)).contains("not a whole number"));
        assert!(err(VarType::Integer, Raw::Float(f64::NAN)).contains("not a whole number"));
        assert!(err(VarType::Integer, Raw::Float(9.3e18)).contains("64-bit range"));
        assert!(err(VarType::Integer, Raw::BigInt("9223372036854775808".into())).contains("64-bit range"));
        assert!(err(VarType::Integer, Raw::Bool(false)).contains("expected an integer"));
    }

    #[test]
    fn text_types_take_strings_and_atoms_but_not_nil() {
        for t in [VarType::String, VarType::Choice, VarType::Module] {
            assert_eq!(ok(t, Raw::Atom("greedy".into())), Value::Text("greedy".into()));
            assert_eq!(ok(t, Raw::Str("é".into())), Value::Text("é".into()));
            assert!(err(t, Raw::Nil).contains("got nil"));
            assert!(err(t, Raw::Int(1)).contains("got the integer 1"));
        }
    }

    #[test]
    fn boolean_is_strict() {
        assert_eq!(ok(VarType::Boolean, Raw::Bool(true)), Value::Boolean(true));
        assert!(err(VarType::Boolean, Raw::Int(1)).contains("expected a boolean"));
        assert!(err(VarType::Boolean, Raw::Str("true".into())).contains("expected a boolean"));
    }

    #[test]
    fn embedding_is_a_list_of_numbers() {
        assert_eq!(
            ok(VarType::Embedding, Raw::List(vec![Raw::Int(1), Raw::Float(0.5)])),
            Value::Embedding(vec![1.0, 0.5])
        );
        assert!(err(VarType::Embedding, Raw::List(vec![Raw::Int(1), Raw::Str("x".into())])).contains("element 1"));
        assert!(err(VarType::Embedding, Raw::Int(1)).contains("expected an embedding"));
    }

    fn tensor(shape: Vec<i64>, data: Raw) -> Raw {
        Raw::Map(vec![("shape".into(), Raw::List(shape.into_iter().map(Raw::Int).collect())), ("data".into(), data)])
    }

    fn nums(xs: &[i64]) -> Raw {
        Raw::List(xs.iter().map(|x| Raw::Int(*x)).collect())
    }

    #[test]
    fn tensor_accepts_flat_and_nested_data() {
        let want = Value::Tensor(Tensor { shape: vec![2, 2], data: vec![1.0, 2.0, 3.0, 4.0] });
        assert_eq!(ok(VarType::Tensor, tensor(vec![2, 2], nums(&[1, 2, 3, 4]))), want);
        let nested = Raw::List(vec![nums(&[1, 2]), nums(&[3, 4])]);
        assert_eq!(ok(VarType::Tensor, tensor(vec![2, 2], nested)), want);
        let three = Raw::List(vec![Raw::List(vec![nums(&[1]), nums(&[2])])]);
        assert_eq!(
            ok(VarType::Tensor, tensor(vec![1, 2, 1], three)),
            Value::Tensor(Tensor { shape: vec![1, 2, 1], data: vec![1.0, 2.0] })
        );
        assert_eq!(
            ok(VarType::Tensor, tensor(vec![], nums(&[7]))),
            Value::Tensor(Tensor { shape: vec![], data: vec![7.0] })
        );
    }

    #[test]
    fn tensor_refuses_mismatched_data() {
        assert!(err(VarType::Tensor, tensor(vec![2, 2], nums(&[1, 2, 3])))
            .contains("has 3 elements but shape [2, 2] needs 4"));
        let ragged = Raw::List(vec![nums(&[1, 2]), nums(&[3])]);
        assert!(err(VarType::Tensor, tensor(vec![2, 2], ragged)).contains("nesting"));
        let too_deep = Raw::List(vec![Raw::List(vec![nums(&[1])])]);
        assert!(err(VarType::Tensor, tensor(vec![1, 1], too_deep)).contains("nesting"));
        assert!(err(VarType::Tensor, tensor(vec![-1], nums(&[]))).contains("non-negative"));
        assert!(err(VarType::Tensor, nums(&[1])).contains("expected a tensor"));
        let huge = tensor(vec![i64::MAX, i64::MAX], nums(&[]));
        assert!(err(VarType::Tensor, huge).contains("too many elements"));
    }

    #[test]
    fn a_huge_shape_is_refused_without_reserving_for_it() {
        // 2^40 elements would be 8 TiB: reserving it aborted the process.
        let huge = tensor(vec![1 << 40], nums(&[]));
        assert!(err(VarType::Tensor, huge).contains("has 0 elements but shape [1099511627776]"));
        let nested = tensor(vec![1 << 40, 2], Raw::List(vec![nums(&[1, 2])]));
        assert!(err(VarType::Tensor, nested).contains("nesting"));
    }

    #[test]
    fn both_ends_of_the_integer_range_are_refused_alike() {
        assert!(err(VarType::Integer, Raw::Float(9_223_372_036_854_775_808.0)).contains("64-bit range"));
        assert!(err(VarType::Integer, Raw::Float(-9_223_372_036_854_775_808.0)).contains("64-bit range"));
        assert!(err(VarType::Integer, Raw::Float(-9.3e18)).contains("64-bit range"));
        assert_eq!(ok(VarType::Integer, Raw::Int(i64::MIN)), Value::Integer(i64::MIN));
    }

    #[test]
    fn json_sizes() {
        assert_eq!(Value::Text("ab".into()).json_bytes(), 4);
        assert_eq!(Value::Text("a\"\n\u{1}".into()).json_bytes(), 2 + 1 + 2 + 2 + 6);
        assert_eq!(json_string_bytes("é"), 4);
        assert_eq!(Value::Embedding(vec![0.0; 4]).json_bytes(), 2 + 4 * 25);
        assert_eq!(Raw::List(vec![Raw::Int(1), Raw::Int(2)]).json_bytes(), 2 + 2 * 25);
    }

    #[test]
    fn floats_print_with_a_decimal_point() {
        assert_eq!(fmt_float(1.0), "1.0");
        assert_eq!(fmt_float(1.5), "1.5");
        assert_eq!(fmt_float(f64::NEG_INFINITY), "-Infinity");
    }
}
