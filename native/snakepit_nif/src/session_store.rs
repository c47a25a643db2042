//! NIFs behind `Snakepit.Bridge.SessionStore`.
//!
//! # Scheduling
//! A NIF on a normal scheduler must give its thread back well under a
//! millisecond. Every call whose cost grows with its input or its result has
//! a `_dirty` twin on a dirty CPU scheduler, and this module alone decides
//! which runs: the normal NIF weighs the work ([`Scale`], against [`HEAVY`])
//! and, when it is too heavy, answers `:dirty` having done nothing; Elixir
//! then repeats the call on the twin. Writes weigh their input terms before
//! decoding them; reads weigh the result after the lookup, before encoding it.
//! Elixir measures nothing.

use std::collections::HashMap;
use std::time::Duration;

use rustler::{Encoder, Env, MapIterator, NifResult, Term, TermType};
use snakepit_core::model::{Source, Variable};
use snakepit_core::store::{Change, NewVariable};

use crate::atoms;
use crate::convert::{self, text};
use crate::STORE;

/// Work heavier than this runs on a dirty scheduler: the one definition of
/// "heavy" for the Elixir API. In the units of `Value::weight`: a list element,
/// 64 bytes of text, or a scalar weighs 1.
const HEAVY: usize = 10_000;

/// What a batch entry weighs on the way in, besides its term (the value of a
/// write, the identifier of a read): each is decoded, looked up and checked.
/// Set so that 200 entries of scalars are the most a normal scheduler takes.
const ENTRY_IN: usize = HEAVY / 200 - 1;

/// What a batch read's variable weighs on the way out, besides its value.
const ENTRY_OUT: usize = 8;

/// Weighs work against [`HEAVY`]. Input terms are walked only until the total
/// passes it, so weighing costs at most `HEAVY` steps whatever the term.
struct Scale {
    left: usize,
}

impl Scale {
    fn new() -> Scale {
        Scale { left: HEAVY }
    }

    /// Adds `w`; false once the total is over [`HEAVY`].
    fn add(&mut self, w: usize) -> bool {
        match self.left.checked_sub(w) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    /// Adds a term about to be decoded, as `Value::weight` would weigh its
    /// value: a list weighs its elements, anything else 1; and inside it each
    /// list element or map entry 1, each 64 bytes of binary 1. False once over.
    fn term(&mut self, term: Term) -> bool {
        (term.get_type() == TermType::List || self.add(1)) && self.inside(term, 0)
    }

    fn inside(&mut self, term: Term, depth: usize) -> bool {
        // Deeper terms are refused by the conversion, which stops there too.
        if depth > convert::MAX_DEPTH {
            return true;
        }
        match term.get_type() {
            TermType::List => {
                let mut rest = term;
                // An improper tail just ends the walk; decoding reports it.
                while let Ok((head, tail)) = rest.list_get_cell() {
                    if !(self.add(1) && self.inside(head, depth + 1)) {
                        return false;
                    }
                    rest = tail;
                }
                true
            }
            TermType::Map => {
                MapIterator::new(term).into_iter().flatten().all(|(_, v)| self.add(1) && self.inside(v, depth + 1))
            }
            TermType::Binary => self.add(term.decode_as_binary().map_or(0, |b| b.len() / 64)),
            _ => true,
        }
    }

    /// Adds each element of a batch list as [`ENTRY_IN`] plus what `part`
    /// picks of it. False once over.
    fn batch<'a>(&mut self, list: Term<'a>, part: impl Fn(Term<'a>) -> Option<Term<'a>>) -> bool {
        let mut rest = list;
        while let Ok((entry, tail)) = rest.list_get_cell() {
            if !(self.add(ENTRY_IN) && part(entry).is_none_or(|t| self.term(t))) {
                return false;
            }
            rest = tail;
        }
        true
    }

    /// Whether `terms` together are too heavy for a normal scheduler.
    fn heavy<'a>(terms: impl IntoIterator<Item = Term<'a>>) -> bool {
        let mut scale = Scale::new();
        !terms.into_iter().all(|t| scale.term(t))
    }
}

/// `:dirty`: the caller repeats the call on the `_dirty` twin.
fn dirty(env: Env) -> Term {
    atoms::dirty().encode(env)
}

fn session_info<'a>(env: Env<'a>, info: &snakepit_core::store::SessionInfo) -> Term<'a> {
    let keys = [
        atoms::id(),
        atoms::metadata(),
        atoms::created_at(),
        atoms::last_accessed_at(),
        atoms::ttl_ms(),
        atoms::variable_count(),
        atoms::watcher_count(),
    ]
    .map(|a| a.encode(env));
    let values = [
        info.id.as_str().encode(env),
        convert::metadata_term(env, &info.metadata),
        convert::datetime(env, info.created_at_us),
        convert::datetime(env, info.last_accessed_at_us),
        (info.ttl.as_millis() as u64).encode(env),
        info.variable_count.encode(env),
        info.watcher_count.encode(env),
    ];
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

#[rustler::nif]
fn create_session<'a>(env: Env<'a>, id: &str, metadata: Term<'a>, ttl_ms: u64) -> Term<'a> {
    let created = convert::metadata(metadata).and_then(|m| STORE.create_session(id, m, Duration::from_millis(ttl_ms)));
    match created {
        Ok(info) => (atoms::ok(), session_info(env, &info)).encode(env),
        Err(e) => convert::error(env, &e),
    }
}

#[rustler::nif]
fn get_session<'a>(env: Env<'a>, id: &str) -> Term<'a> {
    match STORE.get_session(id) {
        Ok(info) => (atoms::ok(), session_info(env, &info)).encode(env),
        Err(e) => convert::error(env, &e),
    }
}

/// Always dirty: dropping a big session takes a while.
#[rustler::nif(schedule = "DirtyCpu")]
fn delete_session(id: &str) -> usize {
    STORE.delete_session(id, Source::Elixir).unwrap_or(0)
}

#[rustler::nif]
fn list_sessions() -> Vec<String> {
    STORE.list_sessions()
}

#[rustler::nif]
fn stats(env: Env) -> Term {
    let st = STORE.stats();
    let keys = [atoms::sessions(), atoms::grpc_watchers(), atoms::elixir_watchers(), atoms::watchers_opened()];
    let values = [st.sessions as u64, st.grpc_watchers as u64, st.elixir_watchers as u64, st.watchers_opened];
    Term::map_from_arrays(env, &keys, &values).expect("distinct keys")
}

#[rustler::nif]
fn session_exists(id: &str) -> bool {
    STORE.session_exists(id)
}

#[rustler::nif]
fn touch_session(id: &str) -> bool {
    STORE.touch_session(id)
}

fn register_variable_impl<'a>(
    env: Env<'a>,
    session_id: &str,
    name: Term<'a>,
    var_type: Term<'a>,
    value: Term<'a>,
    constraints: Term<'a>,
    metadata: Term<'a>,
) -> NifResult<Term<'a>> {
    let name = text(name)?.into_owned();
    let registered = (|| {
        let new = NewVariable {
            name,
            ty: convert::var_type(var_type)?,
            value: convert::raw(value)?,
            constraints: convert::constraints(constraints)?,
            metadata: convert::metadata(metadata)?,
        };
        STORE.register_variable(session_id, new, Source::Elixir)
    })();
    Ok(convert::result(env, registered.map(|v| v.id.to_string())))
}

#[rustler::nif]
fn register_variable<'a>(
    env: Env<'a>,
    session_id: &str,
    name: Term<'a>,
    var_type: Term<'a>,
    value: Term<'a>,
    constraints: Term<'a>,
    metadata: Term<'a>,
) -> NifResult<Term<'a>> {
    if Scale::heavy([value, constraints]) {
        return Ok(dirty(env));
    }
    register_variable_impl(env, session_id, name, var_type, value, constraints, metadata)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn register_variable_dirty<'a>(
    env: Env<'a>,
    session_id: &str,
    name: Term<'a>,
    var_type: Term<'a>,
    value: Term<'a>,
    constraints: Term<'a>,
    metadata: Term<'a>,
) -> NifResult<Term<'a>> {
    register_variable_impl(env, session_id, name, var_type, value, constraints, metadata)
}

fn read_variable<'a>(
    env: Env<'a>,
    session_id: &str,
    identifier: Term<'a>,
    dirty: bool,
    encode: fn(Env<'a>, &Variable) -> Term<'a>,
) -> NifResult<Term<'a>> {
    let identifier = text(identifier)?;
    Ok(match STORE.get_variable(session_id, &identifier) {
        Ok(v) if !dirty && !Scale::new().add(v.value.weight()) => self::dirty(env),
        Ok(v) => (atoms::ok(), encode(env, &v)).encode(env),
        Err(e) => convert::error(env, &e),
    })
}

fn value_of<'a>(env: Env<'a>, v: &Variable) -> Term<'a> {
    convert::value(env, &v.value)
}

#[rustler::nif]
fn get_variable<'a>(env: Env<'a>, session_id: &str, identifier: Term<'a>) -> NifResult<Term<'a>> {
    read_variable(env, session_id, identifier, false, convert::variable_tuple)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn get_variable_dirty<'a>(env: Env<'a>, session_id: &str, identifier: Term<'a>) -> NifResult<Term<'a>> {
    read_variable(env, session_id, identifier, true, convert::variable_tuple)
}

#[rustler::nif]
fn get_variable_value<'a>(env: Env<'a>, session_id: &str, identifier: Term<'a>) -> NifResult<Term<'a>> {
    read_variable(env, session_id, identifier, false, value_of)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn get_variable_value_dirty<'a>(env: Env<'a>, session_id: &str, identifier: Term<'a>) -> NifResult<Term<'a>> {
    read_variable(env, session_id, identifier, true, value_of)
}

#[rustler::nif]
fn has_variable<'a>(env: Env<'a>, session_id: &str, identifier: Term<'a>) -> NifResult<Term<'a>> {
    let identifier = text(identifier)?;
    Ok(convert::result(env, STORE.has_variable(session_id, &identifier)))
}

fn update_variable_impl<'a>(
    env: Env<'a>,
    session_id: &str,
    identifier: Term<'a>,
    value: Term<'a>,
    metadata: Term<'a>,
    expected_version: i64,
) -> NifResult<Term<'a>> {
    let identifier = text(identifier)?;
    let updated = (|| {
        let change = Change { source: Source::Elixir, metadata: convert::metadata(metadata)?, expected_version };
        STORE.update_variable(session_id, &identifier, convert::raw(value)?, &change)
    })();
    Ok(convert::result(env, updated))
}

#[rustler::nif]
fn update_variable<'a>(
    env: Env<'a>,
    session_id: &str,
    identifier: Term<'a>,
    value: Term<'a>,
    metadata: Term<'a>,
    expected_version: i64,
) -> NifResult<Term<'a>> {
    if Scale::heavy([value]) {
        return Ok(dirty(env));
    }
    update_variable_impl(env, session_id, identifier, value, metadata, expected_version)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn update_variable_dirty<'a>(
    env: Env<'a>,
    session_id: &str,
    identifier: Term<'a>,
    value: Term<'a>,
    metadata: Term<'a>,
    expected_version: i64,
) -> NifResult<Term<'a>> {
    update_variable_impl(env, session_id, identifier, value, metadata, expected_version)
}

#[rustler::nif]
fn get_variables<'a>(env: Env<'a>, session_id: &str, identifiers: Term<'a>) -> NifResult<Term<'a>> {
    if !Scale::new().batch(identifiers, Some) {
        return Ok(dirty(env));
    }
    get_variables_impl(env, session_id, identifiers.decode()?, false)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn get_variables_dirty<'a>(env: Env<'a>, session_id: &str, identifiers: Vec<Term<'a>>) -> NifResult<Term<'a>> {
    get_variables_impl(env, session_id, identifiers, true)
}

fn get_variables_impl<'a>(
    env: Env<'a>,
    session_id: &str,
    identifiers: Vec<Term<'a>>,
    dirty: bool,
) -> NifResult<Term<'a>> {
    // Results are keyed by the identifier term as given (atom or string).
    let mut keys = HashMap::with_capacity(identifiers.len());
    let mut names = Vec::with_capacity(identifiers.len());
    for term in identifiers {
        let name = text(term)?.into_owned();
        keys.insert(name.clone(), term);
        names.push(name);
    }
    Ok(match STORE.get_variables(session_id, names) {
        Ok(snakepit_core::store::BatchGet { found, .. })
            if !dirty && {
                let mut scale = Scale::new();
                !found.iter().all(|(_, v)| scale.add(ENTRY_OUT) && scale.add(v.value.weight()))
            } =>
        {
            self::dirty(env)
        }
        Ok(snakepit_core::store::BatchGet { found, missing }) => {
            let (fk, fv): (Vec<Term>, Vec<Term>) =
                found.iter().map(|(k, v)| (keys[k], convert::variable_tuple(env, v))).unzip();
            let found = Term::map_from_term_arrays(env, &fk, &fv)?;
            let missing: Vec<Term> = missing.iter().map(|k| keys[k]).collect();
            (atoms::ok(), (found, missing)).encode(env)
        }
        Err(e) => convert::error(env, &e),
    })
}

/// `updates` is a list of `{identifier, value}`. Returns `{:ok, %{key => version}}`,
/// `{:partial, %{key => version}, %{key => reason}}` (non-atomic, some refused) or
/// `{:error, {:batch_failed, %{key => reason}}}` (atomic, nothing applied).
#[rustler::nif]
fn update_variables<'a>(
    env: Env<'a>,
    session_id: &str,
    updates: Term<'a>,
    metadata: Term<'a>,
    atomic: bool,
) -> NifResult<Term<'a>> {
    let value = |pair: Term<'a>| rustler::types::tuple::get_tuple(pair).ok().and_then(|t| t.get(1).copied());
    if !Scale::new().batch(updates, value) {
        return Ok(dirty(env));
    }
    update_variables_impl(env, session_id, updates.decode()?, metadata, atomic)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn update_variables_dirty<'a>(
    env: Env<'a>,
    session_id: &str,
    updates: Vec<(Term<'a>, Term<'a>)>,
    metadata: Term<'a>,
    atomic: bool,
) -> NifResult<Term<'a>> {
    update_variables_impl(env, session_id, updates, metadata, atomic)
}

fn update_variables_impl<'a>(
    env: Env<'a>,
    session_id: &str,
    updates: Vec<(Term<'a>, Term<'a>)>,
    metadata: Term<'a>,
    atomic: bool,
) -> NifResult<Term<'a>> {
    let mut keys = HashMap::with_capacity(updates.len());
    let mut inputs = Vec::with_capacity(updates.len());
    for (key, value) in updates {
        let name = text(key)?.into_owned();
        keys.insert(name.clone(), key);
        inputs.push((name, snakepit_core::store::Input { value: convert::raw(value), declared: None }));
    }
    let metadata = match convert::metadata(metadata) {
        Ok(m) => m,
        Err(e) => return Ok(convert::error(env, &e)),
    };
    let change = Change { source: Source::Elixir, metadata, expected_version: 0 };
    let outcome = match STORE.update_variables(session_id, inputs, atomic, &change) {
        Ok(o) => o,
        Err(e) => return Ok(convert::error(env, &e)),
    };
    let (ak, av): (Vec<Term>, Vec<Term>) = outcome.applied.iter().map(|(k, v)| (keys[k], v.encode(env))).unzip();
    let applied = Term::map_from_term_arrays(env, &ak, &av)?;
    let (ek, ev): (Vec<Term>, Vec<Term>) =
        outcome.errors.iter().map(|(k, e)| (keys[k], convert::reason(env, e))).unzip();
    let errors = Term::map_from_term_arrays(env, &ek, &ev)?;
    Ok(if outcome.errors.is_empty() {
        (atoms::ok(), applied).encode(env)
    } else if atomic {
        (atoms::error(), (atoms::batch_failed(), errors)).encode(env)
    } else {
        (atoms::partial(), applied, errors).encode(env)
    })
}

/// Always dirty: its cost grows with the session.
#[rustler::nif(schedule = "DirtyCpu")]
fn list_variables<'a>(env: Env<'a>, session_id: &str, pattern: Option<&str>) -> Term<'a> {
    match STORE.list_variables(session_id, pattern) {
        Ok(vars) => {
            let terms: Vec<Term> = vars.iter().map(|v| convert::variable_tuple(env, v)).collect();
            (atoms::ok(), terms).encode(env)
        }
        Err(e) => convert::error(env, &e),
    }
}

#[rustler::nif]
fn delete_variable<'a>(env: Env<'a>, session_id: &str, identifier: Term<'a>) -> NifResult<Term<'a>> {
    let identifier = text(identifier)?;
    Ok(match STORE.delete_variable(session_id, &identifier) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => convert::error(env, &e),
    })
}
