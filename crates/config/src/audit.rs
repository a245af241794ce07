//! The `audit:` section: where the tamper-evident record of every call lives,
//! how durable it is, how long it is kept, and which SIEMs receive a copy.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Recording every request and security event. On by default; turning it
    /// off is logged at start as a warning.
    pub enabled: bool,
    /// The audit database; default `<data_dir>/audit.db`.
    pub path: Option<PathBuf>,
    /// What happens when a record cannot be written: `closed` (default) refuses
    /// the call (the client gets an error instead of the result); `open` logs
    /// the failure and releases the response.
    pub on_failure: AuditFailureMode,
    /// `full` flushes every group commit to disk (survives power loss); `normal`
    /// survives a crash of the gateway process but not of the machine.
    pub sync: AuditSync,
    /// Longest a group commit waits for the database (another writer, a
    /// locked file) before the records in it count as failed.
    pub write_timeout_ms: u64,
    /// Most records in one group commit.
    pub max_batch: usize,
    /// Under load (the previous group held more than one record), how long a
    /// group waits for companions before it is committed: fewer, larger
    /// commits cost less per record. The wait is an eighth of this per record
    /// of the previous group, all of it from eight on; a group already of 16
    /// goes at once, and an idle gateway never waits.
    pub commit_delay_us: u64,
    /// A signed checkpoint of the chain head is written at least this often...
    pub checkpoint_every_records: u64,
    /// ...and at least this often while records arrive.
    pub checkpoint_interval_secs: u64,
    /// Ed25519 signing key for checkpoints (PKCS#8, kept outside the audit
    /// database); default `<data_dir>/audit-signing.key`, created on first use.
    pub signing_key: Option<PathBuf>,
    /// Name of this gateway process in every record; default the host name
    /// and process id.
    pub replica_id: Option<String>,
    /// Argument names (case-insensitive) whose values are always masked, in
    /// addition to the built-in list (password, token, secret, key, …).
    pub mask_arguments: Vec<String>,
    /// Records older than this many days are exported to `archive_dir` and
    /// deleted; 0 keeps everything.
    pub retention_days: u32,
    /// Where expired ranges are written (JSON lines) before deletion; default
    /// `<data_dir>/audit-archive`.
    pub archive_dir: Option<PathBuf>,
    /// Copies of every record for SIEMs, fed from the durable log.
    pub sinks: Vec<Sink>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            enabled: true,
            path: None,
            on_failure: AuditFailureMode::Closed,
            sync: AuditSync::Full,
            write_timeout_ms: 5000,
            max_batch: 512,
            commit_delay_us: 1000,
            checkpoint_every_records: 1000,
            checkpoint_interval_secs: 60,
            signing_key: None,
            replica_id: None,
            mask_arguments: Vec::new(),
            retention_days: 400,
            archive_dir: None,
            sinks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditFailureMode {
    Closed,
    Open,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditSync {
    Full,
    Normal,
}

/// One SIEM destination. Every sink reads the durable log from its own
/// cursor, so a sink that is down catches up when it returns.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "RawSink")]
pub struct Sink {
    /// Unique name; the sink's cursor is stored under it.
    pub name: String,
    #[serde(flatten)]
    pub kind: SinkKind,
    /// Most records per delivery.
    #[serde(default = "default_sink_batch")]
    pub batch: usize,
    /// Retries back off exponentially from this delay...
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    /// ...up to this one.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Most undelivered records kept for this sink; beyond it the oldest are
    /// dropped from the sink's backlog (never from the audit log) and the loss
    /// is recorded as an `audit.sink_overflow` event.
    #[serde(default = "default_spool")]
    pub max_backlog: u64,
}

fn default_sink_batch() -> usize {
    200
}
fn default_backoff_min() -> u64 {
    200
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_spool() -> u64 {
    1_000_000
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    /// JSON lines appended to a file.
    File { path: PathBuf },
    /// OTLP/HTTP logs (JSON encoding), e.g. `http://collector:4318/v1/logs`.
    Otlp {
        endpoint: String,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
    },
    /// Splunk HTTP Event Collector, e.g. `https://splunk:8088/services/collector/event`.
    SplunkHec {
        endpoint: String,
        /// The HEC token; `${ENV}` references are expanded.
        token: String,
        #[serde(default)]
        index: Option<String>,
        #[serde(default)]
        sourcetype: Option<String>,
    },
    /// RFC 5424 syslog over UDP or TCP (octet-counted framing).
    Syslog {
        /// `udp://host:514` or `tcp://host:601`.
        address: String,
        #[serde(default = "default_app_name")]
        app_name: String,
    },
}

fn default_app_name() -> String {
    "portcullis".into()
}

/// A sink as written in YAML: one flat mapping whose `type` says which keys
/// apply. (serde cannot combine a flattened, tagged enum with
/// `deny_unknown_fields`, so the mapping is checked here.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    path: Option<PathBuf>,
    endpoint: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    token: Option<String>,
    index: Option<String>,
    sourcetype: Option<String>,
    address: Option<String>,
    app_name: Option<String>,
    batch: Option<usize>,
    backoff_min_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    max_backlog: Option<u64>,
}

impl RawSink {
    /// The keys that belong to one sink type or another, and whether each is set.
    fn type_specific_keys(&self) -> [(&'static str, bool); 8] {
        [
            ("path", self.path.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("headers", self.headers.is_some()),
            ("token", self.token.is_some()),
            ("index", self.index.is_some()),
            ("sourcetype", self.sourcetype.is_some()),
            ("address", self.address.is_some()),
            ("app_name", self.app_name.is_some()),
        ]
    }
}

impl TryFrom<RawSink> for Sink {
    type Error = String;

    fn try_from(r: RawSink) -> Result<Sink, String> {
        let name = r.name.clone();
        let required = |v: Option<String>, key: &str| {
            v.ok_or_else(|| format!("sink {name:?} of type {} needs `{key}`", r.kind))
        };
        let (kind, applies): (SinkKind, &[&str]) = match r.kind.as_str() {
            "file" => (
                SinkKind::File {
                    path: r
                        .path
                        .clone()
                        .ok_or_else(|| format!("sink {name:?} of type file needs `path`"))?,
                },
                &["path"],
            ),
            "otlp" => (
                SinkKind::Otlp {
                    endpoint: required(r.endpoint.clone(), "endpoint")?,
                    headers: r.headers.clone().unwrap_or_default(),
                },
                &["endpoint", "headers"],
            ),
            "splunk_hec" => (
                SinkKind::SplunkHec {
                    endpoint: required(r.endpoint.clone(), "endpoint")?,
                    token: required(r.token.clone(), "token")?,
                    index: r.index.clone(),
                    sourcetype: r.sourcetype.clone(),
                },
                &["endpoint", "token", "index", "sourcetype"],
            ),
            "syslog" => (
                SinkKind::Syslog {
                    address: required(r.address.clone(), "address")?,
                    app_name: r.app_name.clone().unwrap_or_else(default_app_name),
                },
                &["address", "app_name"],
            ),
            other => {
                return Err(format!(
                    "sink {name:?}: unknown type {other:?} (file, otlp, splunk_hec, syslog)"
                ))
            }
        };
        let extra: Vec<&str> = r
            .type_specific_keys()
            .into_iter()
            .filter(|(key, present)| *present && !applies.contains(key))
            .map(|(key, _)| key)
            .collect();
        if !extra.is_empty() {
            return Err(format!(
                "sink {name:?} of type {}: `{}` does not apply",
                r.kind,
                extra.join("`, `")
            ));
        }
        Ok(Sink {
            name: r.name,
            kind,
            batch: r.batch.unwrap_or_else(default_sink_batch),
            backoff_min_ms: r.backoff_min_ms.unwrap_or_else(default_backoff_min),
            backoff_max_ms: r.backoff_max_ms.unwrap_or_else(default_backoff_max),
            max_backlog: r.max_backlog.unwrap_or_else(default_spool),
        })
    }
}
