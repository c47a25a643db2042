//! Elixir terms ⇄ core values. Decoding is shape-only: the core decides what a
//! value means for a type.

use std::borrow::Cow;

use rustler::{Encoder, Env, Error, ListIterator, MapIterator, NifResult, Term, TermType};
use snakepit_core::model::{Metadata, Source, Variable};
use snakepit_core::value::{Raw, Tensor, Value, VarType};
use snakepit_core::StoreError;

use crate::atoms;
use crate::STORE;

/// Deeper nesting than this in a value is refused rather than risk the stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// A binary or an atom as text; anything else raises ArgumentError.
pub fn text<'a>(term: Term<'a>) -> NifResult<Cow<'a, str>> {
    match term.get_type() {
        TermType::Binary => {
            let bin = term.decode_as_binary()?;
            std::str::from_utf8(bin.as_slice()).map(Cow::Borrowed).map_err(|_| Error::BadArg)
        }
        TermType::Atom => Ok(Cow::Owned(term.atom_to_string()?)),
        _ => Err(Error::BadArg),
    }
}

/// A variable type from an atom or a string.
pub fn var_type(term: Term) -> Result<VarType, StoreError> {
    let name = text(term).map_err(|_| StoreError::InvalidType("a type must be an atom or a string".into()))?;
    VarType::parse(&name)
}

/// Any supported term as a value, refused before it is copied if it cannot
/// fit in `max_value_bytes` (see [`Budget`]).
pub fn raw(term: Term) -> Result<Raw, StoreError> {
    let limit = STORE.limits().max_value_bytes;
    raw_at(term, 0, &mut Budget { left: limit, limit, setting: "max_value_bytes" })
}

/// Constraints as a raw map, refused before it is copied if it cannot fit in
/// `max_constraint_bytes`.
pub fn constraints(term: Term) -> Result<Raw, StoreError> {
    let limit = STORE.limits().max_constraint_bytes;
    raw_at(term, 0, &mut Budget { left: limit, limit, setting: "max_constraint_bytes" }).map_err(|e| match e {
        StoreError::InvalidValue(m) => StoreError::InvalidConstraints(m),
        other => other,
    })
}

/// What is left of a size limit while a term is converted. Each part is
/// charged no more than its JSON form can take (2 bytes a list element, the
/// length plus quotes for text), so a term refused here would have been
/// refused by the store too; it only stops a huge term from being copied first.
struct Budget {
    left: usize,
    limit: usize,
    setting: &'static str,
}

impl Budget {
    fn charge(&mut self, bytes: usize) -> Result<(), StoreError> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(snakepit_core::limits::exceeded("the value is too big", self.setting, self.limit)),
        }
    }
}

/// Largest bignum, in bytes of its external form, written out in decimal:
/// anything bigger is beyond every float (2^1024 needs 128 bytes), and
/// formatting a bignum takes time quadratic in its length.
const MAX_DECIMAL_BIGNUM_BYTES: usize = 140;

/// An integer outside i64: its decimal digits if it could still be a float,
/// else only how big it is (no value accepts it either way).
fn big_integer(term: Term) -> Raw {
    let size = term.to_binary().len();
    if size <= MAX_DECIMAL_BIGNUM_BYTES {
        Raw::BigInt(format!("{term:?}"))
    } else {
        Raw::BigInt(format!("of {size} bytes"))
    }
}

/// What kind of term this is, for messages: never the term itself, which may be huge.
fn kind(term: Term) -> &'static str {
    match term.get_type() {
        TermType::Atom => "an atom",
        TermType::Binary => "a binary",
        TermType::List => "a list",
        TermType::Float => "a float",
        TermType::Fun => "a function",
        TermType::Integer => "an integer",
        TermType::Map => "a map",
        TermType::Pid => "a pid",
        TermType::Port => "a port",
        TermType::Ref => "a reference",
        TermType::Tuple => "a tuple",
        TermType::Unknown => "an unknown term",
    }
}

fn unsupported(term: Term, why: &str) -> StoreError {
    StoreError::InvalidValue(format!("{why}, got {}", kind(term)))
}

fn raw_at(term: Term, depth: usize, budget: &mut Budget) -> Result<Raw, StoreError> {
    if depth > MAX_DEPTH {
        return Err(StoreError::InvalidValue(format!("value is nested deeper than {MAX_DEPTH} levels")));
    }
    // Every part of a value takes at least two bytes of JSON (`0,`, `""`, `[]`).
    budget.charge(2)?;
    Ok(match term.get_type() {
        TermType::Atom => match term.atom_to_string().map_err(|_| unsupported(term, "unreadable atom"))?.as_str() {
            "nil" => Raw::Nil,
            "true" => Raw::Bool(true),
            "false" => Raw::Bool(false),
            other => Raw::Atom(other.to_string()),
        },
        TermType::Integer => match term.decode::<i64>() {
            Ok(i) => Raw::Int(i),
            Err(_) => big_integer(term),
        },
        TermType::Float => Raw::Float(term.decode::<f64>().map_err(|_| unsupported(term, "unreadable float"))?),
        TermType::Binary => {
            let bin = term.decode_as_binary().map_err(|_| unsupported(term, "unreadable binary"))?;
            budget.charge(bin.len())?;
            match std::str::from_utf8(bin.as_slice()) {
                Ok(s) => Raw::Str(s.to_string()),
                Err(_) => return Err(StoreError::InvalidValue("binary is not valid UTF-8 text".into())),
            }
        }
        TermType::List => {
            // An improper list (`[1 | 2]`) iterates into a panic; its length is an error instead.
            term.list_length().map_err(|_| unsupported(term, "improper lists are not values"))?;
            let items: ListIterator = term.decode().map_err(|_| unsupported(term, "improper list"))?;
            Raw::List(items.map(|t| raw_at(t, depth + 1, budget)).collect::<Result<_, _>>()?)
        }
        TermType::Map => {
            let iter = MapIterator::new(term).ok_or_else(|| unsupported(term, "unreadable map"))?;
            let mut entries = Vec::new();
            for (k, v) in iter {
                let key = text(k).map_err(|_| unsupported(k, "map keys must be atoms or strings"))?;
                if key == "__struct__" {
                    return Err(StoreError::InvalidValue("structs are not values".into()));
                }
                budget.charge(key.len() + 1)?;
                entries.push((key.into_owned(), raw_at(v, depth + 1, budget)?));
            }
            Raw::Map(entries)
        }
        _ => return Err(unsupported(term, "values are nil, booleans, numbers, atoms, strings, lists and maps")),
    })
}

/// Metadata from a map whose keys are atoms or strings and whose values are
/// atoms, strings or numbers; `nil` or an empty map is none.
pub fn metadata(term: Term) -> Result<Metadata, StoreError> {
    let bad =
        || StoreError::InvalidArgument("metadata must be a map of strings (atoms and numbers are converted)".into());
    if term.get_type() == TermType::Atom && term.atom_to_string().is_ok_and(|a| a == "nil") {
        return Ok(Metadata::new());
    }
    // Refused before copying; the store checks bytes once it is copied.
    let max = STORE.limits().max_metadata_entries;
    let size = term.map_size().map_err(|_| bad())?;
    if size > max {
        return Err(snakepit_core::limits::exceeded(
            format_args!("the metadata has {size} entries"),
            "max_metadata_entries",
            max,
        ));
    }
    let iter = MapIterator::new(term).ok_or_else(bad)?;
    let mut out = Metadata::new();
    for (k, v) in iter {
        let key = text(k).map_err(|_| bad())?.into_owned();
        let val = match v.get_type() {
            TermType::Integer => v.decode::<i64>().map(|i| i.to_string()).map_err(|_| bad())?,
            TermType::Float => v.decode::<f64>().map(|f| f.to_string()).map_err(|_| bad())?,
            _ => text(v).map_err(|_| bad())?.into_owned(),
        };
        out.insert(key, val);
    }
    Ok(out)
}

/// `{:error, reason}` for a store error.
pub fn error<'a>(env: Env<'a>, e: &StoreError) -> Term<'a> {
    (atoms::error(), reason(env, e)).encode(env)
}

/// The reason term of a store error, in the shapes `Snakepit.Bridge.SessionStore`
/// documents. The atom is [`StoreError::kind`], so the core names every
/// failure once, for both doors; the variant decides what travels with it:
/// - a missing variable is the bare atom `:not_found`, the one exception
///   (the Elixir API's name for kind `variable_not_found`);
/// - `{kind, id}` for a missing session, `{kind, id_or_name}` for one that exists already;
/// - `{kind, current_version}` for a version conflict;
/// - `{kind, message}` for the rest.
pub fn reason<'a>(env: Env<'a>, e: &StoreError) -> Term<'a> {
    if let StoreError::VariableNotFound { .. } = e {
        return atoms::not_found().encode(env);
    }
    let kind = rustler::Atom::from_str(env, e.kind()).expect("kinds are short ASCII names");
    match e {
        StoreError::SessionNotFound(id) | StoreError::SessionExists(id) | StoreError::VariableExists(id) => {
            (kind, id.as_str()).encode(env)
        }
        StoreError::VersionConflict { current, .. } => (kind, *current).encode(env),
        _ => (kind, e.to_string()).encode(env),
    }
}

/// `{:ok, value}` or `{:error, reason}`.
pub fn result<'a, T: Encoder>(env: Env<'a>, r: Result<T, StoreError>) -> Term<'a> {
    match r {
        Ok(v) => (atoms::ok(), v).encode(env),
        Err(e) => error(env, &e),
    }
}

fn float<'a>(env: Env<'a>, x: f64) -> Term<'a> {
    if x.is_nan() {
        atoms::nan().encode(env)
    } else if x == f64::INFINITY {
        atoms::infinity().encode(env)
    } else if x == f64::NEG_INFINITY {
        atoms::negative_infinity().encode(env)
    } else {
        x.encode(env)
    }
}

fn floats<'a>(env: Env<'a>, xs: &[f64]) -> Term<'a> {
    let terms: Vec<Term> = xs.iter().map(|x| float(env, *x)).collect();
    terms.encode(env)
}

/// A value as the term Elixir code expects; special floats become atoms.
pub fn value<'a>(env: Env<'a>, v: &Value) -> Term<'a> {
    match v {
        Value::Float(x) => float(env, *x),
        Value::Integer(i) => i.encode(env),
        Value::Text(s) => s.as_str().encode(env),
        Value::Boolean(b) => b.encode(env),
        Value::Embedding(xs) => floats(env, xs),
        Value::Tensor(Tensor { shape, data }) => {
            let keys = [atoms::shape().encode(env), atoms::data().encode(env)];
            let values = [shape.encode(env), floats(env, data)];
            Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
        }
    }
}

/// A raw value (constraints) as a term; map keys become atoms.
pub fn raw_term<'a>(env: Env<'a>, r: &Raw) -> Term<'a> {
    match r {
        Raw::Nil => atoms::nil().encode(env),
        Raw::Bool(b) => b.encode(env),
        Raw::Int(i) => i.encode(env),
        Raw::BigInt(s) | Raw::Str(s) => s.as_str().encode(env),
        Raw::Atom(a) => {
            rustler::Atom::from_str(env, a).map(|a| a.encode(env)).unwrap_or_else(|_| a.as_str().encode(env))
        }
        Raw::Float(x) => float(env, *x),
        Raw::List(items) => items.iter().map(|i| raw_term(env, i)).collect::<Vec<_>>().encode(env),
        Raw::Floats(xs) => floats(env, xs),
        Raw::Map(entries) => {
            let keys: Vec<Term> = entries
                .iter()
                .map(|(k, _)| {
                    rustler::Atom::from_str(env, k).map(|a| a.encode(env)).unwrap_or_else(|_| k.as_str().encode(env))
                })
                .collect();
            let values: Vec<Term> = entries.iter().map(|(_, v)| raw_term(env, v)).collect();
            Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
        }
    }
}

pub fn type_atom<'a>(env: Env<'a>, ty: VarType) -> Term<'a> {
    match ty {
        VarType::Float => atoms::float(),
        VarType::Integer => atoms::integer(),
        VarType::String => atoms::string(),
        VarType::Boolean => atoms::boolean(),
        VarType::Choice => atoms::choice(),
        VarType::Module => atoms::module(),
        VarType::Embedding => atoms::embedding(),
        VarType::Tensor => atoms::tensor(),
    }
    .encode(env)
}

pub fn source_atom<'a>(env: Env<'a>, s: Source) -> Term<'a> {
    match s {
        Source::Elixir => atoms::elixir(),
        Source::Python => atoms::python(),
    }
    .encode(env)
}

pub fn metadata_term<'a>(env: Env<'a>, m: &Metadata) -> Term<'a> {
    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
    let values: Vec<&str> = m.values().map(String::as_str).collect();
    Term::map_from_arrays(env, &keys, &values).expect("distinct keys")
}

/// A `%DateTime{}` in UTC from Unix microseconds, built here because doing it
/// in Elixir would cost more than the rest of a read.
pub fn datetime<'a>(env: Env<'a>, unix_us: i64) -> Term<'a> {
    let secs = unix_us.div_euclid(1_000_000);
    let micros = unix_us.rem_euclid(1_000_000);
    let (y, mo, d) = snakepit_core::clock::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let keys = [
        atoms::struct_(),
        atoms::calendar(),
        atoms::year(),
        atoms::month(),
        atoms::day(),
        atoms::hour(),
        atoms::minute(),
        atoms::second(),
        atoms::microsecond(),
        atoms::std_offset(),
        atoms::utc_offset(),
        atoms::time_zone(),
        atoms::zone_abbr(),
    ]
    .map(|a| a.encode(env));
    let values = [
        atoms::datetime_struct().encode(env),
        atoms::calendar_iso().encode(env),
        y.encode(env),
        mo.encode(env),
        d.encode(env),
        (sod / 3600).encode(env),
        (sod % 3600 / 60).encode(env),
        (sod % 60).encode(env),
        (micros, 6).encode(env),
        0.encode(env),
        0.encode(env),
        "Etc/UTC".encode(env),
        "UTC".encode(env),
    ];
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

/// The fields of a variable in `%Snakepit.Bridge.Variable{}` order, with
/// timestamps encoded by `time`.
fn variable_fields<'a>(env: Env<'a>, v: &Variable, time: fn(Env<'a>, i64) -> Term<'a>) -> [Term<'a>; 10] {
    [
        v.id.as_ref().encode(env),
        v.name.as_ref().encode(env),
        type_atom(env, v.ty),
        value(env, &v.value),
        raw_term(env, &v.constraints.to_raw()),
        metadata_term(env, &v.metadata),
        v.version.encode(env),
        source_atom(env, v.source),
        time(env, v.created_at_us),
        time(env, v.updated_at_us),
    ]
}

/// A `%Snakepit.Bridge.Variable{}`, for messages sent to processes.
pub fn variable<'a>(env: Env<'a>, v: &Variable) -> Term<'a> {
    let keys = [
        atoms::struct_(),
        atoms::id(),
        atoms::name(),
        atoms::type_(),
        atoms::value(),
        atoms::constraints(),
        atoms::metadata(),
        atoms::version(),
        atoms::source(),
        atoms::created_at(),
        atoms::last_updated_at(),
    ]
    .map(|a| a.encode(env));
    let mut values = Vec::with_capacity(keys.len());
    values.push(atoms::variable_struct().encode(env));
    values.extend(variable_fields(env, v, datetime));
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

/// The same fields as a tuple, timestamps as `{y, mo, d, h, mi, s, us}`: the
/// read path returns this and Elixir builds the structs from literals, which
/// skips the key sorting `enif_make_map_from_arrays` does on every call.
pub fn variable_tuple<'a>(env: Env<'a>, v: &Variable) -> Term<'a> {
    rustler::types::tuple::make_tuple(env, &variable_fields(env, v, datetime_tuple))
}

fn datetime_tuple<'a>(env: Env<'a>, unix_us: i64) -> Term<'a> {
    let secs = unix_us.div_euclid(1_000_000);
    let (y, mo, d) = snakepit_core::clock::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let parts = [y, mo, d, sod / 3600, sod % 3600 / 60, sod % 60, unix_us.rem_euclid(1_000_000)];
    rustler::types::tuple::make_tuple(env, &parts.map(|p| p.encode(env)))
}
