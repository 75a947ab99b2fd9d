//! The messages of `priv/proto/dspex_bridge.proto`, declared with prost's derives (field
//! numbers and types as in the .proto; the Python side uses code generated from it, and the
//! interop tests exchange every frame kind with it).

#![allow(missing_docs)]

use prost::{Message, Oneof};

#[derive(Clone, PartialEq, Message)]
pub struct Value {
    #[prost(oneof = "value::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub kind: Option<value::Kind>,
}

pub mod value {
    use prost::Oneof;

    #[derive(Clone, PartialEq, Oneof)]
    pub enum Kind {
        #[prost(bool, tag = "1")]
        Null(bool),
        #[prost(bool, tag = "2")]
        Boolean(bool),
        #[prost(sint64, tag = "3")]
        Integer(i64),
        #[prost(double, tag = "4")]
        Float(f64),
        #[prost(string, tag = "5")]
        Text(String),
        #[prost(bytes = "vec", tag = "6")]
        Binary(Vec<u8>),
        #[prost(message, tag = "7")]
        List(super::ValueList),
        #[prost(message, tag = "8")]
        Map(super::ValueMap),
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueList {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<Value>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueMap {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(message, optional, tag = "1")]
    pub key: Option<Value>,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Frame {
    #[prost(oneof = "Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Body {
    #[prost(message, tag = "1")]
    Hello(Hello),
    #[prost(message, tag = "2")]
    Welcome(Welcome),
    #[prost(message, tag = "3")]
    Call(Call),
    #[prost(message, tag = "4")]
    Result(CallResult),
    #[prost(message, tag = "5")]
    Cancel(Cancel),
    #[prost(message, tag = "6")]
    SessionRequest(SessionRequest),
    #[prost(message, tag = "7")]
    SessionReply(SessionReply),
    #[prost(message, tag = "8")]
    Ping(Heartbeat),
    #[prost(message, tag = "9")]
    Pong(Heartbeat),
    #[prost(message, tag = "10")]
    Change(Change),
    #[prost(message, tag = "11")]
    Log(Log),
}

#[derive(Clone, PartialEq, Message)]
pub struct Hello {
    #[prost(uint32, tag = "1")]
    pub protocol: u32,
    #[prost(string, tag = "2")]
    pub pool: String,
    #[prost(string, tag = "3")]
    pub token: String,
    #[prost(string, repeated, tag = "4")]
    pub tools: Vec<String>,
    #[prost(uint32, tag = "5")]
    pub concurrency: u32,
    #[prost(string, tag = "6")]
    pub worker: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Welcome {
    #[prost(uint32, tag = "1")]
    pub protocol: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Call {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub tool: String,
    #[prost(message, optional, tag = "3")]
    pub args: Option<ValueMap>,
    #[prost(string, tag = "4")]
    pub session_id: String,
    #[prost(uint64, tag = "5")]
    pub timeout_ms: u64,
}

/// `Result` in the .proto.
#[derive(Clone, PartialEq, Message)]
pub struct CallResult {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Outcome", tags = "2, 3")]
    pub outcome: Option<Outcome>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Outcome {
    #[prost(message, tag = "2")]
    Ok(Value),
    #[prost(message, tag = "3")]
    Error(Failure),
}

#[derive(Clone, PartialEq, Message)]
pub struct Failure {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, optional, tag = "3")]
    pub detail: Option<Value>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Cancel {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub call_id: u64,
    #[prost(string, tag = "3")]
    pub op: String,
    #[prost(message, optional, tag = "4")]
    pub args: Option<ValueMap>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionReply {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Outcome", tags = "2, 3")]
    pub outcome: Option<Outcome>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Heartbeat {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Change {
    #[prost(uint64, tag = "1")]
    pub watch_id: u64,
    #[prost(message, optional, tag = "2")]
    pub name: Option<Value>,
    #[prost(message, optional, tag = "3")]
    pub old: Option<Value>,
    #[prost(message, optional, tag = "4")]
    pub new: Option<Value>,
    #[prost(uint64, tag = "5")]
    pub version: u64,
    #[prost(bool, tag = "6")]
    pub lost: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Log {
    #[prost(int32, tag = "1")]
    pub stream: i32,
    #[prost(string, tag = "2")]
    pub line: String,
}
