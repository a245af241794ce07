//! Real receivers on loopback for the sink tests: an HTTP server (HEC and
//! OTLP), a UDP syslog socket and a TCP syslog listener with octet-counted
//! framing, each recording every byte it accepted; and a parser for the
//! syslog messages they receive.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[derive(Default)]
pub struct HttpState {
    /// Status and body to answer with.
    pub answer: (u16, String),
    /// Requests answered with 2xx.
    pub accepted: Vec<(HeaderMap, Bytes)>,
    /// Requests answered otherwise.
    pub refused: usize,
}

#[derive(Clone)]
pub struct Http {
    pub state: Arc<Mutex<HttpState>>,
    pub port: u16,
}

impl Http {
    /// Serve on `port` (0 for any), answering `status` with `body`.
    pub async fn start(port: u16, status: u16, body: &str) -> Http {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(HttpState {
            answer: (status, body.to_owned()),
            ..Default::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Http { state, port }
    }

    pub fn answer(&self, status: u16, body: &str) {
        self.state.lock().unwrap().answer = (status, body.to_owned());
    }

    pub fn accepted(&self) -> Vec<(HeaderMap, Bytes)> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn handle(
    State(state): State<Arc<Mutex<HttpState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mut s = state.lock().unwrap();
    let (status, answer) = s.answer.clone();
    if (200..300).contains(&status) {
        s.accepted.push((headers, body));
    } else {
        s.refused += 1;
    }
    (StatusCode::from_u16(status).unwrap(), answer)
}

/// A UDP syslog receiver: one message per datagram.
pub struct Udp {
    pub messages: Arc<Mutex<Vec<Vec<u8>>>>,
    pub port: u16,
}

impl Udp {
    pub async fn start() -> Udp {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = sock.recv(&mut buf).await {
                m.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        Udp { messages, port }
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().clone()
    }
}

/// A TCP syslog receiver reading octet-counted frames (`LEN SP MSG`).
pub struct Tcp {
    /// Bytes that did not form a frame (must stay empty).
    pub garbage: Arc<Mutex<Vec<u8>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Tcp {
    pub async fn start(port: u16, messages: Arc<Mutex<Vec<Vec<u8>>>>) -> Tcp {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (stop, mut stopped) = watch::channel(false);
        let garbage = Arc::new(Mutex::new(Vec::new()));
        let (m, g, s) = (messages, garbage.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            conns.spawn(read_frames(stream, m.clone(), g.clone(), s.subscribe()));
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
            drop(listener);
            while conns.join_next().await.is_some() {}
        });
        Tcp {
            garbage,
            stop,
            task,
        }
    }

    /// Close the listener and every connection, and wait until they are.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn read_frames(
    mut stream: TcpStream,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    garbage: Arc<Mutex<Vec<u8>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tokio::select! {
            n = stream.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.changed() => break,
        };
        pending.extend_from_slice(&buf[..n]);
        // Take every complete frame.
        while let Some(space) = pending.iter().position(|b| *b == b' ') {
            let Some(len) = std::str::from_utf8(&pending[..space])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                garbage.lock().unwrap().append(&mut pending);
                break;
            };
            if pending.len() < space + 1 + len {
                break;
            }
            let msg = pending[space + 1..space + 1 + len].to_vec();
            pending.drain(..space + 1 + len);
            messages.lock().unwrap().push(msg);
        }
    }
    if !pending.is_empty() {
        garbage.lock().unwrap().append(&mut pending);
    }
}

/// One parsed RFC 5424 message.
#[derive(Debug)]
pub struct Syslog {
    pub pri: u8,
    pub timestamp: String,
    pub app: String,
    pub msgid: String,
    pub sd_id: String,
    pub params: BTreeMap<String, String>,
    pub json: Value,
}

pub fn parse_syslog(msg: &[u8]) -> Syslog {
    let bom = msg
        .windows(3)
        .position(|w| w == b"\xEF\xBB\xBF")
        .expect("MSG starts with a BOM");
    let head = std::str::from_utf8(&msg[..bom]).unwrap();
    let json: Value = serde_json::from_slice(&msg[bom + 3..]).expect("MSG is JSON");
    let rest = head.strip_prefix('<').unwrap();
    let (pri, rest) = rest.split_once('>').unwrap();
    let rest = rest.strip_prefix("1 ").expect("version 1");
    let fields: Vec<&str> = rest.splitn(6, ' ').collect();
    let (timestamp, _host, app, _procid, msgid, sd) = (
        fields[0], fields[1], fields[2], fields[3], fields[4], fields[5],
    );
    for f in &fields[..5] {
        assert!(!f.is_empty() && f.bytes().all(|b| (33..=126).contains(&b)));
    }
    // [ID name="value" …] then one space before the MSG.
    let sd = sd.strip_prefix('[').unwrap();
    let (sd_id, mut rest) = sd.split_once(' ').unwrap();
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix(']') {
            assert_eq!(after, " ", "one space between SD and MSG");
            break;
        }
        let (name, after) = rest.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next().unwrap();
            match c {
                '\\' => value.push(chars.next().unwrap().1),
                '"' => break i,
                ']' => panic!("unescaped ] in a PARAM-VALUE"),
                c => value.push(c),
            }
        };
        params.insert(name.to_owned(), value);
        rest = &after[end + 1..];
    }
    Syslog {
        pri: pri.parse().unwrap(),
        timestamp: timestamp.to_owned(),
        app: app.to_owned(),
        msgid: msgid.to_owned(),
        sd_id: sd_id.to_owned(),
        params,
        json,
    }
}
