//! A Redis client for the Redis backend: redis-rs's connection manager on the NIF's own
//! tokio runtime (`registry::RUNTIME`, shared with the gRPC server).
//!
//! No NIF here waits for the network. `redis_connect` and `redis_command` start the work on
//! the runtime and return at once; the result reaches the calling process as
//! `{:dspex_redis, ref, result}` through `OwnedEnv::send_and_clear`, which is right on the
//! runtime's threads. A command returns a [`Pending`] handle: `redis_cancel` on it after a
//! caller's deadline makes sure that no late reply lands in that caller's mailbox.
//!
//! Replies cross as plain terms: `nil`, integers, binaries, floats, booleans, `:ok` for a
//! status `OK`, lists for arrays and sets, maps as lists of `{key, value}` pairs. Errors are
//! `{:redis, code, detail}` (the server said no), `{:unavailable, text}` (no connection,
//! I/O, a response timeout), `{:auth_failed, text}` and `{:client, text}`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Value};
use rustler::{Encoder, Env, LocalPid, NifMap, NifResult, OwnedEnv, ResourceArc, Term};

use crate::atoms;
use crate::binary::to_binary;
use crate::registry;

mod tags {
    rustler::atoms! {
        dspex_redis, redis, unavailable, auth_failed, client, sent, cancelled,
        no_runtime, too_deep,
    }
}

/// How deep a reply may nest before it is refused; our scripts return two levels.
const MAX_REPLY_DEPTH: usize = 64;

/// A connection to one server: the manager reconnects by itself after a dropped link.
pub struct RedisConn {
    manager: ConnectionManager,
}

#[rustler::resource_impl]
impl rustler::Resource for RedisConn {}

// A request's reply is sent at most once: either the runtime sends it (PENDING -> SENT) or
// the caller cancels first (PENDING -> CANCELLED) and nothing is ever sent.
const PENDING: u8 = 0;
const SENT: u8 = 1;
const CANCELLED: u8 = 2;

/// One command in flight, for `redis_cancel`.
pub struct Pending {
    state: Arc<AtomicU8>,
}

#[rustler::resource_impl]
impl rustler::Resource for Pending {}

#[derive(NifMap)]
pub(crate) struct ConnectOpts {
    username: Option<String>,
    password: Option<String>,
    pub(crate) connect_timeout_ms: u64,
    response_timeout_ms: u64,
    retries: usize,
    /// PEM: the CA that signed a `rediss://` server's certificate (else the system's roots).
    tls_ca: Option<String>,
    /// PEM: a client certificate and its key, for servers that ask for one.
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

/// Where a reply goes: the caller and its reference, copied into an env of our own.
pub(crate) struct ReplyTo {
    env: OwnedEnv,
    reference: rustler::env::SavedTerm,
    pid: LocalPid,
}

impl ReplyTo {
    pub(crate) fn new(pid: LocalPid, reference: Term) -> ReplyTo {
        let env = OwnedEnv::new();
        let reference = env.save(reference);
        ReplyTo {
            env,
            reference,
            pid,
        }
    }

    pub(crate) fn send(mut self, make: impl for<'a> FnOnce(Env<'a>) -> Term<'a>) {
        let reference = self.reference;
        let _ = self.env.send_and_clear(&self.pid, |env| {
            (tags::dspex_redis(), reference.load(env), make(env)).encode(env)
        });
    }
}

/// Opens a connection to `url` (`redis://[user[:password]@]host[:port][/db]`; a username
/// or password in `opts` wins over the URL's). Replies `{:ok, conn}` or `{:error, reason}`
/// to `pid` with `reference`; a wrong password is `{:auth_failed, text}`. Returns `:ok` or
/// `{:error, reason}` for a URL it cannot read. A regular NIF: the dialing runs on the
/// runtime.
#[rustler::nif]
fn redis_connect<'a>(
    env: Env<'a>,
    url: String,
    opts: ConnectOpts,
    pid: LocalPid,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let (runtime, client) = match dial_prelude(env, &url, &opts) {
        Ok(ready) => ready,
        Err(error) => return Ok(error),
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(opts.connect_timeout_ms.max(1))))
        .set_response_timeout(Some(Duration::from_millis(opts.response_timeout_ms.max(1))))
        .set_number_of_retries(opts.retries)
        .set_max_delay(Duration::from_millis(500));
    let reply = ReplyTo::new(pid, reference);
    runtime.spawn(async move {
        let result = ConnectionManager::new_with_config(client, config).await;
        reply.send(move |env| match result {
            Ok(manager) => (atoms::ok(), ResourceArc::new(RedisConn { manager })).encode(env),
            Err(e) => (atoms::error(), error_term(env, &e)).encode(env),
        });
    });
    Ok(atoms::ok().encode(env))
}

/// The NIF runtime, or the error term a NIF returns when it could not be built.
pub(crate) fn runtime(env: Env) -> Result<&'static tokio::runtime::Runtime, Term> {
    registry::RUNTIME
        .as_ref()
        .ok_or_else(|| (atoms::error(), tags::no_runtime()).encode(env))
}

/// The runtime and a client for `url`, or the error term a dialing NIF returns at once.
pub(crate) fn dial_prelude<'a>(
    env: Env<'a>,
    url: &str,
    opts: &ConnectOpts,
) -> Result<(&'static tokio::runtime::Runtime, redis::Client), Term<'a>> {
    let runtime = runtime(env)?;
    client_for(url, opts)
        .map(|client| (runtime, client))
        .map_err(|e| (atoms::error(), error_term(env, &e)).encode(env))
}

fn client_for(url: &str, opts: &ConnectOpts) -> Result<redis::Client, RedisError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &opts.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &opts.password {
        settings = settings.set_password(password);
    }
    let info = info.set_redis_settings(settings);
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if tls {
        // rustls takes its crypto from a process-wide default: ring, set once (a second
        // install fails harmlessly, as does one made by another library first).
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client_tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: cert.as_bytes().to_vec(),
            client_key: key.as_bytes().to_vec(),
        }),
        (None, None) => None,
        _ => {
            return Err(client_error(
                "a client certificate needs its key, and a key its certificate",
            ))
        }
    };
    let root_cert = opts.tls_ca.as_ref().map(|pem| pem.as_bytes().to_vec());
    match (tls, client_tls.is_some() || root_cert.is_some()) {
        (true, true) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        ),
        (false, true) => Err(client_error("TLS options need a rediss:// URL")),
        _ => redis::Client::open(info),
    }
}

fn client_error(text: &'static str) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, text))
}

/// Sends `commands` (each a list of binaries, integers or floats) on `conn`: one command
/// alone, several as a pipeline, inside MULTI/EXEC when `atomic`. Replies `{:ok, value}`
/// for one command and `{:ok, [value | {:error, reason}]}` for several (each command's own
/// server error in its place), or `{:error, reason}`. Returns `{:ok, pending}` for
/// `redis_cancel`. A regular NIF: encoding the arguments is all it does here.
#[rustler::nif]
fn redis_command<'a>(
    env: Env<'a>,
    conn: ResourceArc<RedisConn>,
    commands: Vec<Vec<Term<'a>>>,
    atomic: bool,
    pid: LocalPid,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let runtime = match runtime(env) {
        Ok(runtime) => runtime,
        Err(error) => return Ok(error),
    };
    if commands.is_empty() || commands.iter().any(|c| c.is_empty()) {
        return Err(rustler::Error::BadArg);
    }
    let mut pipe = redis::pipe();
    for args in &commands {
        let mut cmd = redis::Cmd::new();
        for arg in args {
            push_arg(&mut cmd, *arg)?;
        }
        pipe.add_command(cmd);
    }
    if atomic {
        pipe.atomic();
    }
    let single = commands.len() == 1 && !atomic;
    let state = Arc::new(AtomicU8::new(PENDING));
    let pending = ResourceArc::new(Pending {
        state: state.clone(),
    });
    let reply = ReplyTo::new(pid, reference);
    let mut manager = conn.manager.clone();
    runtime.spawn(async move {
        let result: Result<Vec<Value>, RedisError> = if single {
            let cmd = pipe.cmd_iter().next().cloned();
            match cmd {
                Some(cmd) => manager.send_packed_command(&cmd).await.map(|v| vec![v]),
                None => Ok(vec![]),
            }
        } else {
            pipe.ignore_errors();
            pipe.query_async(&mut manager).await
        };
        if state
            .compare_exchange(PENDING, SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        reply.send(move |env| match result {
            Ok(mut values) if single => match values.pop() {
                Some(Value::ServerError(e)) => {
                    (atoms::error(), server_error_term(env, &e)).encode(env)
                }
                Some(v) => reply_term(env, &v),
                None => (atoms::ok(), ()).encode(env),
            },
            Ok(values) => {
                let items: Vec<Term> = values
                    .iter()
                    .map(|v| match v {
                        Value::ServerError(e) => {
                            (atoms::error(), server_error_term(env, e)).encode(env)
                        }
                        v => value_term(env, v, 0).unwrap_or_else(|| too_deep(env)),
                    })
                    .collect();
                (atoms::ok(), items).encode(env)
            }
            Err(e) => (atoms::error(), error_term(env, &e)).encode(env),
        });
    });
    Ok((atoms::ok(), pending).encode(env))
}

/// Makes sure no reply of `pending` is sent any more: `:cancelled` when none was, `:sent`
/// when the reply is already on its way (the caller must then receive it).
#[rustler::nif]
fn redis_cancel(pending: ResourceArc<Pending>) -> rustler::Atom {
    match pending
        .state
        .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
    {
        Ok(_) => tags::cancelled(),
        Err(CANCELLED) => tags::cancelled(),
        Err(_) => tags::sent(),
    }
}

fn push_arg(cmd: &mut redis::Cmd, arg: Term) -> NifResult<()> {
    if let Ok(bin) = arg.decode::<rustler::Binary>() {
        cmd.arg(bin.as_slice());
    } else if let Ok(int) = arg.decode::<i64>() {
        cmd.arg(int);
    } else if let Ok(float) = arg.decode::<f64>() {
        cmd.arg(float);
    } else {
        return Err(rustler::Error::BadArg);
    }
    Ok(())
}

fn reply_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value_term(env, value, 0) {
        Some(term) => (atoms::ok(), term).encode(env),
        None => (atoms::error(), too_deep(env)).encode(env),
    }
}

fn too_deep(env: Env) -> Term {
    (tags::client(), tags::too_deep()).encode(env)
}

/// A reply as a term; `None` when it nests deeper than [`MAX_REPLY_DEPTH`].
fn value_term<'a>(env: Env<'a>, value: &Value, depth: usize) -> Option<Term<'a>> {
    if depth > MAX_REPLY_DEPTH {
        return None;
    }
    let list = |items: &[Value]| -> Option<Term<'a>> {
        let terms: Option<Vec<Term>> = items
            .iter()
            .map(|v| value_term(env, v, depth + 1))
            .collect();
        terms.map(|t| t.encode(env))
    };
    Some(match value {
        Value::Nil => atoms::nil().encode(env),
        Value::Int(i) => i.encode(env),
        Value::BulkString(bytes) => to_binary(env, bytes),
        Value::Array(items) | Value::Set(items) => list(items)?,
        Value::SimpleString(s) => to_binary(env, s.as_bytes()),
        Value::Okay => atoms::ok().encode(env),
        Value::Map(pairs) => {
            let terms: Option<Vec<Term>> = pairs
                .iter()
                .map(|(k, v)| {
                    let k = value_term(env, k, depth + 1)?;
                    let v = value_term(env, v, depth + 1)?;
                    Some((k, v).encode(env))
                })
                .collect();
            terms?.encode(env)
        }
        Value::Attribute { data, .. } => value_term(env, data, depth + 1)?,
        Value::Double(f) => f.encode(env),
        Value::Boolean(b) => b.encode(env),
        Value::VerbatimString { text, .. } => to_binary(env, text.as_bytes()),
        Value::BigNumber(digits) => to_binary(env, digits),
        Value::Push { data, .. } => list(data)?,
        Value::ServerError(e) => (atoms::error(), server_error_term(env, e)).encode(env),
        _ => to_binary(env, format!("{value:?}").as_bytes()),
    })
}

fn server_error_term<'a>(env: Env<'a>, e: &redis::ServerError) -> Term<'a> {
    let code = to_binary(env, e.code().as_bytes());
    let detail = to_binary(env, e.details().unwrap_or("").as_bytes());
    (tags::redis(), code, detail).encode(env)
}

pub(crate) fn error_term<'a>(env: Env<'a>, e: &RedisError) -> Term<'a> {
    let text = |env| to_binary(env, e.to_string().as_bytes());
    if e.kind() == ErrorKind::AuthenticationFailed {
        return (tags::auth_failed(), text(env)).encode(env);
    }
    if let Some(code) = e.code() {
        if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM") {
            return (tags::auth_failed(), text(env)).encode(env);
        }
        let detail = to_binary(env, e.detail().unwrap_or("").as_bytes());
        return (tags::redis(), to_binary(env, code.as_bytes()), detail).encode(env);
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return (tags::unavailable(), text(env)).encode(env);
    }
    (tags::client(), text(env)).encode(env)
}
