//! NIFs behind `SessionStore.watch_variables/3` and `unwatch_variables/1`.
//!
//! Each Elixir subscription is a resource (it is also the `ref` the caller
//! gets: resources are references) plus a task on the runtime that delivers
//! `{:snakepit_variable_update, ref, %Snakepit.Bridge.VariableUpdate{}}` to
//! the watching pid. The resource monitors that pid: when it dies, `down`
//! cancels the subscription at once — no sweep.
//!
//! `unwatch` promises that nothing arrives after it returns, yet the delivery
//! task may be holding a batch it took just before. Each send therefore
//! happens under the `open` lock, which `unwatch` takes to close the
//! resource: a send is either finished (and flushed by the caller) or never made.

use std::collections::HashMap;
use std::sync::Mutex;

use rustler::env::OwnedEnv;
use rustler::{Encoder, Env, LocalPid, Monitor, NifResult, ResourceArc, Term};
use snakepit_core::model::Update;
use snakepit_core::store::WatchRequest;
use snakepit_core::watch::{Canceller, Owner};
use snakepit_core::StoreError;

use crate::atoms;
use crate::convert::{self, text};
use crate::server::runtime;
use crate::STORE;

pub struct WatchResource {
    canceller: Canceller,
    monitor: Mutex<Option<Monitor>>,
    open: Mutex<bool>,
}

impl WatchResource {
    fn close(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.canceller.cancel();
    }
}

#[rustler::resource_impl]
impl rustler::Resource for WatchResource {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.close();
    }
}

fn update_term<'a>(env: Env<'a>, u: &Update) -> Term<'a> {
    let var = u.variable.as_ref();
    let nil = || atoms::nil().encode(env);
    let keys = [
        atoms::struct_(),
        atoms::variable_id(),
        atoms::name(),
        atoms::value(),
        atoms::version(),
        atoms::type_(),
        atoms::source(),
        atoms::metadata(),
        atoms::update_type(),
        atoms::timestamp(),
        atoms::variable(),
        atoms::batch(),
    ]
    .map(|a| a.encode(env));
    let values = [
        atoms::update_struct().encode(env),
        var.map_or_else(nil, |v| v.id.as_ref().encode(env)),
        var.map_or_else(nil, |v| v.name.as_ref().encode(env)),
        var.map_or_else(nil, |v| convert::value(env, &v.value)),
        var.map_or_else(nil, |v| v.version.encode(env)),
        var.map_or_else(nil, |v| convert::type_atom(env, v.ty)),
        convert::source_atom(env, u.source),
        convert::metadata_term(env, &u.metadata),
        rustler::Atom::from_str(env, u.kind.as_str()).expect("atom").encode(env),
        convert::datetime(env, u.at_us),
        var.map_or_else(nil, |v| convert::variable(env, v)),
        u.batch.map_or_else(nil, |b| b.encode(env)),
    ];
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

/// Dirty: the first watch may have to start the runtime.
#[rustler::nif(schedule = "DirtyIo")]
fn watch_variables<'a>(
    env: Env<'a>,
    session_id: &str,
    identifiers: Vec<Term<'a>>,
    patterns: Vec<Term<'a>>,
    pid: LocalPid,
    include_initial: bool,
    since_versions: HashMap<String, i64>,
) -> NifResult<Term<'a>> {
    let identifiers =
        identifiers.into_iter().map(|t| text(t).map(|s| s.into_owned())).collect::<NifResult<Vec<String>>>()?;
    let patterns = patterns.into_iter().map(|t| text(t).map(|s| s.into_owned())).collect::<NifResult<Vec<String>>>()?;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let e = StoreError::ResourceExhausted(format!("cannot start the tokio runtime: {e}"));
            return Ok(convert::error(env, &e));
        }
    };
    let request = WatchRequest { identifiers, patterns, include_initial, since_versions };
    let sub = match STORE.watch(session_id, &request, Owner::Elixir) {
        Ok(sub) => sub,
        Err(e) => return Ok(convert::error(env, &e)),
    };
    let resource = ResourceArc::new(WatchResource {
        canceller: sub.canceller(),
        monitor: Mutex::new(None),
        open: Mutex::new(true),
    });
    match resource.monitor(Some(env), &pid) {
        Some(m) => *resource.monitor.lock().unwrap_or_else(|e| e.into_inner()) = Some(m),
        // The pid is already dead: nobody will ever read these updates.
        None => {
            resource.close();
            return Ok((atoms::ok(), resource).encode(env));
        }
    }
    let delivered = resource.clone();
    rt.spawn(async move {
        let mut msg_env = OwnedEnv::new();
        while let Some(batch) = sub.next_batch().await {
            for u in &batch {
                // Build outside the lock: a big tensor takes a while to
                // encode, and unwatch waits on the lock from a scheduler.
                let message = msg_env.run(|env| {
                    msg_env.save((atoms::snakepit_variable_update(), delivered.encode(env), update_term(env, u)))
                });
                let open = delivered.open.lock().unwrap_or_else(|e| e.into_inner());
                if !*open {
                    return;
                }
                let sent = msg_env.send_and_clear(&pid, |env| message.load(env));
                drop(open);
                if sent.is_err() {
                    delivered.close();
                    return;
                }
            }
        }
    });
    Ok((atoms::ok(), resource).encode(env))
}

/// Ends a watch at once; idempotent. Updates already sent stay in the mailbox.
#[rustler::nif]
fn unwatch_variables(env: Env, resource: ResourceArc<WatchResource>) -> rustler::Atom {
    resource.close();
    if let Some(m) = resource.monitor.lock().unwrap_or_else(|e| e.into_inner()).take() {
        resource.demonitor(Some(env), &m);
    }
    atoms::ok()
}
