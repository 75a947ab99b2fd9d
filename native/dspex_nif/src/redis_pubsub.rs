//! Redis pub/sub for the Redis backend's watchers: one subscriber connection per node,
//! on the NIF's tokio runtime like the command connections (`redis_client.rs`).
//!
//! `redis_subscriber` dials a connection of its own (a subscribed connection takes no
//! other commands) and replies `{:dspex_redis, ref, {:ok, sub}}`. From then on the owner
//! gets `{:dspex_redis_message, sub, channel, payload}` for every message, and
//! `{:dspex_redis_message, sub, :closed}` once when the connection ends (the server went
//! away, or `redis_subscriber_close`). `redis_subscribe` changes the channels and replies
//! `{:dspex_redis, ref, :ok | {:error, reason}}` once the server confirmed, so a message
//! published after that reply is never missed.

use parking_lot::Mutex;
use redis::aio::PubSubSink;
use rustler::{Binary, Encoder, Env, LocalPid, NifResult, OwnedEnv, ResourceArc, Term};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;

use crate::atoms;
use crate::binary::to_binary;
use crate::redis_client::{dial_prelude, error_term, runtime, ConnectOpts, ReplyTo};

mod tags {
    rustler::atoms! { dspex_redis_message, closed }
}

/// A subscriber connection.
pub struct Subscriber {
    sink: PubSubSink,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for Subscriber {}

/// Dials a subscriber connection for `owner` (see the module doc). Returns `:ok` or
/// `{:error, reason}` for a URL it cannot read; a regular NIF.
#[rustler::nif]
fn redis_subscriber<'a>(
    env: Env<'a>,
    url: String,
    opts: ConnectOpts,
    owner: LocalPid,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let (runtime, client) = match dial_prelude(env, &url, &opts) {
        Ok(ready) => ready,
        Err(error) => return Ok(error),
    };
    let timeout = std::time::Duration::from_millis(opts.connect_timeout_ms.max(1));
    let reply = ReplyTo::new(owner, reference);
    runtime.spawn(async move {
        let dialed = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        };
        let (sink, mut stream) = match dialed {
            Ok(pubsub) => pubsub.split(),
            Err(e) => {
                reply.send(move |env| (atoms::error(), error_term(env, &e)).encode(env));
                return;
            }
        };
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let sub = ResourceArc::new(Subscriber {
            sink,
            stop: Mutex::new(Some(stop_tx)),
        });
        let for_reply = sub.clone();
        reply.send(move |env| (atoms::ok(), for_reply).encode(env));
        let mut env = OwnedEnv::new();
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                _ = &mut stop_rx => None,
            };
            let Some(msg) = msg else { break };
            let sent = env.send_and_clear(&owner, |env| {
                let channel = to_binary(env, msg.get_channel_name().as_bytes());
                let payload = to_binary(env, msg.get_payload_bytes());
                (tags::dspex_redis_message(), sub.clone(), channel, payload).encode(env)
            });
            // The owner is gone: nobody reads this connection any more.
            if sent.is_err() {
                return;
            }
        }
        let _ = env.send_and_clear(&owner, |env| {
            (tags::dspex_redis_message(), sub.clone(), tags::closed()).encode(env)
        });
    });
    Ok(atoms::ok().encode(env))
}

/// Subscribes `sub` to `channels` (unsubscribes when `subscribe` is false); the reply
/// comes once the server confirmed. A regular NIF.
#[rustler::nif]
fn redis_subscribe<'a>(
    env: Env<'a>,
    sub: ResourceArc<Subscriber>,
    channels: Vec<Binary<'a>>,
    subscribe: bool,
    pid: LocalPid,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let runtime = match runtime(env) {
        Ok(runtime) => runtime,
        Err(error) => return Ok(error),
    };
    let channels: Vec<Vec<u8>> = channels.iter().map(|c| c.as_slice().to_vec()).collect();
    let mut sink = sub.sink.clone();
    let reply = ReplyTo::new(pid, reference);
    runtime.spawn(async move {
        let result = if subscribe {
            sink.subscribe(&channels).await
        } else {
            sink.unsubscribe(&channels).await
        };
        reply.send(move |env| match result {
            Ok(()) => atoms::ok().encode(env),
            Err(e) => (atoms::error(), error_term(env, &e)).encode(env),
        });
    });
    Ok(atoms::ok().encode(env))
}

/// Ends `sub`'s connection; its owner then gets `:closed`. Closing twice is a no-op.
#[rustler::nif]
fn redis_subscriber_close(sub: ResourceArc<Subscriber>) -> rustler::Atom {
    if let Some(stop) = sub.stop.lock().take() {
        let _ = stop.send(());
    }
    atoms::ok()
}
