//! MCP and JSON-RPC wire handling for Portcullis.
//!
//! This crate knows the shape of messages on the wire: it classifies raw JSON-RPC
//! messages, builds errors, names protocol versions, headers and `_meta` keys, maps
//! upstream names to client-safe exposed names and encodes SSE frames. It does not do
//! I/O and never re-serialises a message through a typed model: messages stay
//! `serde_json::Value` so that no field an upstream sends is ever dropped.

pub mod cursor;
pub mod era;
pub mod headers;
pub mod jsonrpc;
pub mod names;
pub mod sse;

pub use jsonrpc::{ErrorCode, Message, MessageKind, ParseError};
