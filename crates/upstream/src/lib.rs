//! Connectors from the gateway to MCP servers.
//!
//! One [`Connection`] is one initialized conversation with one upstream: a legacy
//! Streamable HTTP session, a stateless 2026-07-28 endpoint, a deprecated HTTP+SSE
//! stream, or a supervised stdio child process. Connections rewrite request ids and
//! progress tokens so that several downstream callers can share one, and hand back
//! server-initiated messages with enough context to route them. This crate does not
//! know about virtual servers, clients or policy.

mod duplex;
mod error;
mod http;
mod legacy_sse;
mod registry;
mod stdio;

pub use error::UpstreamError;
pub use registry::{Connection, HealthHook, OpenParams, UpstreamHandle};

use serde_json::Value;
use tokio::sync::mpsc;

/// Where messages related to one in-flight request go (progress, logging, and
/// server→client requests issued while serving it).
pub type RelatedSink = mpsc::UnboundedSender<Value>;

/// Server-initiated messages not tied to an in-flight request (list changes,
/// resource updates, requests sent on a legacy GET stream).
pub type EventSink = std::sync::Arc<dyn Fn(Value) + Send + Sync>;

/// A message the connection puts on a request's related sink when the upstream
/// closed the request's stream early and the connection is resuming it (SEP-1699
/// polling). Never sent to clients; the gateway may mirror the pause downstream.
pub const STREAM_PAUSED: &str = "portcullis/upstream-stream-paused";

/// Per-request options a caller can set.
#[derive(Debug, Default, Clone)]
pub struct RequestOptions {
    /// Extra HTTP headers (`Mcp-Param-*` mirrors, trace context).
    pub headers: Vec<(String, String)>,
}
