//! The gRPC carrier for remote workers: one tonic server per node, on a tokio runtime that
//! the NIF owns (its threads are not BEAM schedulers).
//!
//! The server is a byte pipe: a frame's bytes (`priv/proto/dspex_bridge.proto`) cross as
//! they are and are decoded by `bridge_decode` on the Elixir side, the same path as a local
//! worker's frames. Each `Bridge.Connect` stream becomes a [`Conn`] resource:
//!
//! * a new stream belongs to the listener process, which is told `{:dspex_grpc, conn,
//!   {:connected, peer}}`; the owner of a connection receives its frames as `{:dspex_grpc,
//!   conn, {:frame, bytes}}` and, at the end, `{:dspex_grpc, conn, :closed}`;
//! * `grpc_set_owner(conn, pid)` hands the connection to another process (the worker
//!   process, once the listener has checked the hello). The owner is monitored: the stream
//!   is closed when it dies;
//! * `grpc_send(conn, bytes)` queues a frame to the worker and `grpc_close(conn, code,
//!   message)` ends the stream with a gRPC status; both are regular NIFs that never block.
//!
//! Messages reach Elixir with `OwnedEnv::send_and_clear`, which is right on these threads
//! and wrong on a scheduler's.

use std::convert::Infallible;
use std::net::TcpListener;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use rustler::{Binary, Encoder, Env, LocalPid, Monitor, NifResult, OwnedEnv, ResourceArc, Term};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder as GrpcEncoder};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::atoms;
use crate::binary::to_binary;
use crate::registry;

mod tags {
    rustler::atoms! { dspex_grpc, connected, frame, closed, not_listening, address_in_use, bind_failed }
}

// ------------------------------------------------------------------------------------
// the codec: frames as bytes

#[derive(Clone, Copy, Default)]
struct BytesCodec;

struct BytesCoder;

impl Codec for BytesCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = BytesCoder;
    type Decoder = BytesCoder;

    fn encoder(&mut self) -> BytesCoder {
        BytesCoder
    }

    fn decoder(&mut self) -> BytesCoder {
        BytesCoder
    }
}

impl GrpcEncoder for BytesCoder {
    type Item = bytes::Bytes;
    type Error = Status;

    fn encode(&mut self, item: bytes::Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCoder {
    type Item = bytes::Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

// ------------------------------------------------------------------------------------
// connections

enum Outgoing {
    Frame(bytes::Bytes),
    Close(Status),
}

/// One worker's stream.
pub struct Conn {
    tx: mpsc::UnboundedSender<Outgoing>,
    // The process that receives the frames, and its monitor.
    owner: Mutex<(LocalPid, Option<Monitor>)>,
}

impl Conn {
    fn close_unavailable(&self) {
        let status = Status::unavailable("the bridge closed this worker");
        let _ = self.tx.send(Outgoing::Close(status));
    }
}

#[rustler::resource_impl]
impl rustler::Resource for Conn {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _monitor: Monitor) {
        if self.owner.lock().0 == pid {
            self.close_unavailable();
        }
    }
}

fn send_from_runtime(pid: &LocalPid, conn: &ResourceArc<Conn>, make: impl FnOnce(Env) -> Term) {
    let mut env = OwnedEnv::new();
    let _ = env.send_and_clear(pid, |env| {
        (tags::dspex_grpc(), conn.clone(), make(env)).encode(env)
    });
}

/// Carries the worker's frames to the connection's owner until the stream ends.
async fn pump(conn: ResourceArc<Conn>, mut inbound: Streaming<bytes::Bytes>) {
    loop {
        let frame = match inbound.next().await {
            Some(Ok(frame)) => Some(frame),
            _ => None,
        };
        // The owner is read under the lock and sent to after it: a hand-over that happens
        // in between is fine, because a worker sends nothing between its hello and the
        // welcome that its new owner sends.
        let pid = conn.owner.lock().0;
        match frame {
            Some(frame) => send_from_runtime(&pid, &conn, |env| {
                (tags::frame(), to_binary(env, &frame)).encode(env)
            }),
            None => {
                send_from_runtime(&pid, &conn, |env| tags::closed().encode(env));
                return;
            }
        }
    }
}

// ------------------------------------------------------------------------------------
// the service

#[derive(Clone)]
struct BridgeService {
    listener: LocalPid,
    max_frame: usize,
}

impl NamedService for BridgeService {
    const NAME: &'static str = "dspex_bridge.v1.Bridge";
}

type OutStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, Status>> + Send + 'static>>;

struct ConnectHandler {
    listener: LocalPid,
}

impl StreamingService<bytes::Bytes> for ConnectHandler {
    type Response = bytes::Bytes;
    type ResponseStream = OutStream;
    type Future = BoxFuture<Response<OutStream>, Status>;

    fn call(&mut self, request: Request<Streaming<bytes::Bytes>>) -> Self::Future {
        let listener = self.listener;
        Box::pin(async move {
            let peer = request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".to_string());
            let (tx, rx) = mpsc::unbounded_channel();
            let conn = ResourceArc::new(Conn {
                tx,
                owner: Mutex::new((listener, None)),
            });
            // From a thread of our own, monitoring takes no env.
            let monitor = conn.monitor(None, &listener);
            if monitor.is_none() {
                return Err(Status::unavailable("the bridge is not accepting workers"));
            }
            conn.owner.lock().1 = monitor;
            send_from_runtime(&listener, &conn, |env| {
                (tags::connected(), peer).encode(env)
            });
            tokio::spawn(pump(conn, request.into_inner()));
            // A Close item ends the stream with its status; dropping every sender ends it
            // with OK.
            let out = UnboundedReceiverStream::new(rx)
                .map(|item| match item {
                    Outgoing::Frame(bytes) => Ok(bytes),
                    Outgoing::Close(status) => Err(status),
                })
                .take_while_inclusive_ok();
            Ok(Response::new(Box::pin(out) as OutStream))
        })
    }
}

/// Ends a stream after its first error, which is how a status reaches the worker.
trait TakeWhileInclusiveOk: Stream<Item = Result<bytes::Bytes, Status>> + Sized {
    fn take_while_inclusive_ok(self) -> UntilError<Self> {
        UntilError {
            inner: self,
            done: false,
        }
    }
}

impl<S: Stream<Item = Result<bytes::Bytes, Status>>> TakeWhileInclusiveOk for S {}

struct UntilError<S> {
    inner: S,
    done: bool,
}

impl<S: Stream<Item = Result<bytes::Bytes, Status>> + Unpin> Stream for UntilError<S> {
    type Item = Result<bytes::Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            other => other,
        }
    }
}

impl<B> Service<http::Request<B>> for BridgeService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let listener = self.listener;
        let max = self.max_frame;
        Box::pin(async move {
            if req.uri().path() != "/dspex_bridge.v1.Bridge/Connect" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc =
                Grpc::new(BytesCodec).apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.streaming(ConnectHandler { listener }, req).await)
        })
    }
}

// ------------------------------------------------------------------------------------
// the server resource

/// A listening server; dropping the last reference stops it.
pub struct Server {
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for Server {}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.lock().take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the server on `host:port` (port 0: a free one); frames of at most `max_frame`
/// bytes. The listener process gets each new stream. Returns `{:ok, server, port}` or
/// `{:error, reason}`. A DirtyIo NIF: a host name may take a resolver's time; serving runs
/// on the NIF's runtime.
#[rustler::nif(schedule = "DirtyIo")]
fn grpc_listen<'a>(
    env: Env<'a>,
    host: String,
    port: u16,
    listener: LocalPid,
    max_frame: usize,
) -> NifResult<Term<'a>> {
    let Some(runtime) = registry::RUNTIME.as_ref() else {
        return Ok((atoms::error(), tags::not_listening()).encode(env));
    };
    let socket = match TcpListener::bind((host.as_str(), port)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Ok((atoms::error(), tags::address_in_use()).encode(env));
        }
        Err(e) => return Ok((atoms::error(), (tags::bind_failed(), e.to_string())).encode(env)),
    };
    let addr = match socket
        .local_addr()
        .and_then(|a| socket.set_nonblocking(true).map(|_| a))
    {
        Ok(a) => a,
        Err(e) => return Ok((atoms::error(), (tags::bind_failed(), e.to_string())).encode(env)),
    };
    let (tx, rx) = oneshot::channel::<()>();
    let service = BridgeService {
        listener,
        max_frame,
    };
    let _guard = runtime.enter();
    let incoming = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => TcpListenerStream::new(l),
        Err(e) => return Ok((atoms::error(), (tags::bind_failed(), e.to_string())).encode(env)),
    };
    runtime.spawn(async move {
        let _ = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    let server = ResourceArc::new(Server {
        shutdown: Mutex::new(Some(tx)),
    });
    Ok((atoms::ok(), server, addr.port()).encode(env))
}

/// Stops a server: it accepts no more streams (open streams end with their owners).
#[rustler::nif]
fn grpc_stop(server: ResourceArc<Server>) -> rustler::Atom {
    if let Some(tx) = server.shutdown.lock().take() {
        let _ = tx.send(());
    }
    atoms::ok()
}

/// Hands the connection to `pid` (monitored from now on, in place of the last owner).
/// `:ok`, or `{:error, :closed}` when `pid` is not alive (the stream is then closed).
#[rustler::nif]
fn grpc_set_owner<'a>(env: Env<'a>, conn: ResourceArc<Conn>, pid: LocalPid) -> Term<'a> {
    let mut owner = conn.owner.lock();
    if let Some(old) = owner.1.take() {
        conn.demonitor(Some(env), &old);
    }
    owner.0 = pid;
    owner.1 = conn.monitor(Some(env), &pid);
    if owner.1.is_none() {
        conn.close_unavailable();
        return (atoms::error(), tags::closed()).encode(env);
    }
    atoms::ok().encode(env)
}

/// Queues a frame to the worker. `:ok`, or `{:error, :closed}` when the stream has ended.
#[rustler::nif]
fn grpc_send<'a>(env: Env<'a>, conn: ResourceArc<Conn>, frame: Binary<'a>) -> Term<'a> {
    let bytes = bytes::Bytes::copy_from_slice(frame.as_slice());
    match conn.tx.send(Outgoing::Frame(bytes)) {
        Ok(()) => atoms::ok().encode(env),
        Err(_) => (atoms::error(), tags::closed()).encode(env),
    }
}

/// Ends the stream with the gRPC status `code` (an integer, as in `grpc::StatusCode`) and
/// `message`. Always `:ok`.
#[rustler::nif]
fn grpc_close(conn: ResourceArc<Conn>, code: i32, message: String) -> rustler::Atom {
    let _ = conn
        .tx
        .send(Outgoing::Close(Status::new(Code::from_i32(code), message)));
    atoms::ok()
}
