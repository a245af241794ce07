//! Syslog (RFC 5424) over UDP or TCP:
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [portcullis@32473 seq="…" …] BOM{…json…}
//! ```
//!
//! - Facility `authpriv` (10): these are security and authorization records,
//!   and syslog daemons keep that facility in a file only root can read.
//!   Severity `info` (6) for a request that succeeded, `notice` (5) for
//!   security events, tool errors and cancellations, `warning` (4) for
//!   refusals and failures.
//! - TIMESTAMP is the record's time (UTC, microseconds); MSGID the event type
//!   (printable ASCII, at most 32 characters); the structured data carries
//!   the sequence number, event id, user, virtual server, tool and outcome,
//!   with `"`, `\` and `]` escaped. The SD-ID uses the documentation
//!   enterprise number 32473 (RFC 5612).
//! - MSG is a UTF-8 BOM followed by the record's export JSON.
//!
//! TCP uses octet counting (RFC 6587 §3.4.1, `LEN SP MSG`) on one long-lived
//! connection; a batch counts as delivered once written and flushed to the
//! socket. Before each batch the connection is checked for a peer that went
//! away, so a restarted receiver gets a fresh connection; a receiver that
//! dies with a batch still in flight can lose it (syslog has no
//! acknowledgements; use HEC or OTLP where that matters).
//!
//! UDP is best effort: one datagram per record, delivered once sent. The
//! socket is connected, so a receiver that is down is usually noticed (the
//! ICMP "port unreachable" fails the next send) and the batch retried, but
//! datagrams sent before that notice are lost. A message longer than
//! 8,000 bytes does not fit: its MSG is replaced by a smaller JSON object
//! that says so (`"truncated"`) and keeps the record's identity and
//! `integrity` section (the full record stays in the audit log), never by a
//! cut JSON text.

use super::validate::{syslog_address, SyslogTransport};
use super::{DeliveryError, Level};
use crate::db::StoredRecord;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

/// Facility `authpriv`.
const FACILITY: u8 = 10;
/// Largest datagram sent over UDP.
pub(crate) const MAX_DATAGRAM: usize = 8000;
const BOM: &[u8] = b"\xEF\xBB\xBF";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

pub(super) struct SyslogSink {
    transport: SyslogTransport,
    host: String,
    port: u16,
    address: String,
    header: Header,
    conn: Option<Conn>,
}

/// The parts of the header that do not change per record.
pub(crate) struct Header {
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
}

impl SyslogSink {
    pub(super) fn new(address: &str, app_name: &str, replica: &str) -> Result<SyslogSink, String> {
        let (transport, host, port) = syslog_address(address)?;
        Ok(SyslogSink {
            transport,
            host,
            port,
            address: address.to_owned(),
            header: Header {
                hostname: hostname(replica),
                app_name: printable(app_name, 48),
                procid: std::process::id().to_string(),
            },
            conn: None,
        })
    }

    pub(super) fn describe(&self) -> String {
        self.address.clone()
    }

    pub(super) async fn deliver(&mut self, records: &[StoredRecord]) -> Result<(), DeliveryError> {
        if let Some(Conn::Tcp(stream)) = &self.conn {
            if !alive(stream) {
                self.conn = None;
            }
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let sent = match &mut conn {
            Conn::Udp(sock) => send_udp(sock, records, &self.header).await,
            Conn::Tcp(stream) => send_tcp(stream, records, &self.header).await,
        };
        // Keep the connection only while it works.
        if sent.is_ok() {
            self.conn = Some(conn);
        }
        sent
    }

    async fn connect(&self) -> Result<Conn, DeliveryError> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| DeliveryError::Transport(format!("resolving {}: {e}", self.host)))?
            .next()
            .ok_or_else(|| DeliveryError::Transport(format!("{} has no address", self.host)))?;
        let refused = |e: std::io::Error| DeliveryError::Transport(format!("{addr}: {e}"));
        Ok(match self.transport {
            SyslogTransport::Udp => {
                let local = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let sock = UdpSocket::bind(local).await.map_err(refused)?;
                sock.connect(addr).await.map_err(refused)?;
                Conn::Udp(sock)
            }
            SyslogTransport::Tcp => {
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| DeliveryError::Transport(format!("{addr}: connect timed out")))?
                    .map_err(refused)?;
                let _ = stream.set_nodelay(true);
                Conn::Tcp(stream)
            }
        })
    }
}

/// False when the peer closed the connection or it failed; whatever a
/// receiver sends (nothing, normally) is read and ignored. On Unix the check
/// reads a duplicate of the socket directly, so it does not depend on the
/// runtime having seen the peer's FIN yet.
#[cfg(unix)]
fn alive(stream: &TcpStream) -> bool {
    use std::io::Read;
    use std::os::fd::AsFd;
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
        return false;
    };
    // The duplicate shares the original's (non-blocking) file description.
    let mut probe = std::net::TcpStream::from(fd);
    if probe.set_nonblocking(true).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    loop {
        match probe.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(not(unix))]
fn alive(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

async fn send_udp(
    sock: &UdpSocket,
    records: &[StoredRecord],
    header: &Header,
) -> Result<(), DeliveryError> {
    for r in records {
        let datagram = message(r, header, Some(MAX_DATAGRAM));
        sock.send(&datagram).await?;
    }
    Ok(())
}

async fn send_tcp(
    stream: &mut TcpStream,
    records: &[StoredRecord],
    header: &Header,
) -> Result<(), DeliveryError> {
    let mut frames = Vec::with_capacity(records.len() * 1200);
    for r in records {
        let msg = message(r, header, None);
        frames.extend_from_slice(format!("{} ", msg.len()).as_bytes());
        frames.extend_from_slice(&msg);
    }
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&frames).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| DeliveryError::Transport("the syslog receiver stopped reading".into()))??;
    Ok(())
}

/// One RFC 5424 message; with `limit`, the MSG is replaced by a shortened
/// JSON object when the whole message would be longer.
pub(crate) fn message(r: &StoredRecord, header: &Header, limit: Option<usize>) -> Vec<u8> {
    let severity = match super::level(r) {
        Level::Info => 6,
        Level::Notice => 5,
        Level::Warning => 4,
    };
    let mut head = format!(
        "<{}>1 {} {} {} {} {} ",
        FACILITY * 8 + severity,
        crate::clock::format_time(r.time_us),
        header.hostname,
        header.app_name,
        header.procid,
        printable(&r.event_type, 32),
    );
    head.push_str(&structured_data(r));
    head.push(' ');
    let mut out = head.into_bytes();
    out.extend_from_slice(BOM);
    let json = super::export_text(r);
    match limit {
        Some(limit) if out.len() + json.len() > limit => {
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(shortened(r, room).as_bytes());
        }
        _ => out.extend_from_slice(json.as_bytes()),
    }
    out
}

fn structured_data(r: &StoredRecord) -> String {
    let mut sd = format!("[portcullis@32473 seq=\"{}\"", r.seq);
    let params = [
        ("event_id", Some(&r.event_id)),
        ("user", r.username.as_ref()),
        ("virtual_server", r.virtual_server.as_ref()),
        ("tool", r.tool.as_ref()),
        ("outcome", r.outcome.as_ref()),
    ];
    for (name, value) in params {
        if let Some(v) = value {
            sd.push_str(&format!(" {name}=\"{}\"", param_value(v)));
        }
    }
    sd.push(']');
    sd
}

/// PARAM-VALUE escaping (RFC 5424 §6.3.3).
pub(crate) fn param_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// PRINTUSASCII only (other bytes become `_`), at most `max` characters,
/// `-` (the nil value) when empty.
pub(crate) fn printable(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

fn hostname(replica: &str) -> String {
    let name = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| replica.split('/').next().unwrap_or("").to_owned());
    printable(&name, 255)
}

/// The record's identity and integrity without its payload, marked as
/// truncated, in at most `room` bytes when at all possible.
fn shortened(r: &StoredRecord, room: usize) -> String {
    let full = r.export();
    let size = super::export_text(r).len();
    let note = format!(
        "record of {size} bytes exceeds the syslog datagram limit; full record in the audit log"
    );
    // First without the arguments (usually what is large), then the envelope.
    let mut v = full.clone();
    if let Some(req) = v.get_mut("request").and_then(Value::as_object_mut) {
        req.remove("arguments");
    }
    if let Value::Object(map) = &mut v {
        map.insert("truncated".into(), Value::String(note.clone()));
    }
    let text = crate::canon::canonical_json(&v);
    if text.len() <= room {
        return text;
    }
    let keep = |p: &str| full.pointer(p).cloned().unwrap_or(Value::Null);
    let text = crate::canon::canonical_json(&json!({
        "schema": keep("/schema"), "event_id": keep("/event_id"),
        "event_type": keep("/event_type"), "time": keep("/time"),
        "replica": keep("/replica"), "integrity": keep("/integrity"),
        "truncated": note,
    }));
    if text.len() <= room {
        return text;
    }
    crate::canon::canonical_json(&json!({
        "event_id": keep("/event_id"), "integrity": {"seq": r.seq}, "truncated": true,
    }))
}
