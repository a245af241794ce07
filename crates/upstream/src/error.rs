use portcullis_protocol::ErrorCode;

/// Why an upstream could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("upstream {0} did not answer within {1} ms")]
    Timeout(String, u64),
    #[error("upstream {0} answered HTTP {1}: {2}")]
    Http(String, u16, String),
    #[error("upstream {0} sent an invalid message: {1}")]
    Protocol(String, String),
    #[error("upstream {0} ended the session")]
    SessionExpired(String),
    #[error("upstream {0} is closed")]
    Closed(String),
    #[error("upstream {0} failed recently ({2}); next attempt allowed in {1} ms")]
    Backoff(String, u64, String),
    #[error("upstream {0} is at its process limit ({1})")]
    Capacity(String, usize),
    #[error("upstream {0} failed to initialize: {1}")]
    Init(String, String),
}

impl UpstreamError {
    /// The JSON-RPC code a client should see for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            UpstreamError::Timeout(..) => ErrorCode::UpstreamTimeout,
            UpstreamError::Capacity(..) => ErrorCode::LimitExceeded,
            _ => ErrorCode::UpstreamUnavailable,
        }
    }
}
