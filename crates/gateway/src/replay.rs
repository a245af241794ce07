//! Resumable response streams for legacy sessions (SEP-1699).
//!
//! Every message of a request's SSE response is kept with an event id
//! `<stream>-<seq>` until shortly after the response went out, so a client whose
//! connection broke, or whose stream the gateway closed because the upstream did,
//! can reconnect with GET + `Last-Event-ID` and miss nothing.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Longest a finished stream stays replayable.
const KEEP_FINISHED: Duration = Duration::from_secs(60);
/// Most events kept per stream; older ones are dropped first.
const MAX_EVENTS: usize = 1_000;

pub type Live = mpsc::UnboundedSender<(String, Value)>;

#[derive(Default)]
struct Stream {
    events: Vec<(u64, Value)>,
    next_seq: u64,
    live: Option<Live>,
    finished: Option<Instant>,
}

#[derive(Default)]
pub struct ReplayLog {
    streams: Mutex<(u64, HashMap<u64, Stream>)>,
}

pub fn event_id(stream: u64, seq: u64) -> String {
    format!("{stream}-{seq}")
}

/// Split `<stream>-<seq>`.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (s, q) = id.split_once('-')?;
    Some((s.parse().ok()?, q.parse().ok()?))
}

impl ReplayLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Stream>)> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh stream number for an answer that is complete when written (nothing to
    /// keep for replay).
    pub fn number(&self) -> u64 {
        let mut g = self.lock();
        g.0 += 1;
        g.0
    }

    /// Start a stream; returns its number and the live receiver for its first
    /// connection. Sequence 0 is the priming event.
    pub fn open(&self) -> (u64, mpsc::UnboundedReceiver<(String, Value)>) {
        let mut g = self.lock();
        g.1.retain(|_, s| s.finished.is_none_or(|t| t.elapsed() < KEEP_FINISHED));
        g.0 += 1;
        let n = g.0;
        let (tx, rx) = mpsc::unbounded_channel();
        g.1.insert(
            n,
            Stream {
                next_seq: 1,
                live: Some(tx),
                ..Default::default()
            },
        );
        (n, rx)
    }

    /// Record a message and deliver it to the connected client, if any.
    pub fn append(&self, stream: u64, msg: Value) {
        let mut g = self.lock();
        let Some(s) = g.1.get_mut(&stream) else {
            return;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        if let Some(live) = &s.live {
            if live.send((event_id(stream, seq), msg.clone())).is_err() {
                s.live = None;
            }
        }
        s.events.push((seq, msg));
        if s.events.len() > MAX_EVENTS {
            s.events.remove(0);
        }
    }

    /// The response went out: close the live connection once it has everything.
    pub fn finish(&self, stream: u64) {
        if let Some(s) = self.lock().1.get_mut(&stream) {
            s.live = None;
            s.finished = Some(Instant::now());
        }
    }

    /// Close the client's connection without ending the stream (it will resume).
    pub fn pause(&self, stream: u64) {
        if let Some(s) = self.lock().1.get_mut(&stream) {
            s.live = None;
        }
    }

    /// Reconnect after `last_seq`: replays what was missed, then continues live.
    /// `None` when the stream is unknown or expired.
    pub fn resume(
        &self,
        stream: u64,
        last_seq: u64,
    ) -> Option<mpsc::UnboundedReceiver<(String, Value)>> {
        let mut g = self.lock();
        let s = g.1.get_mut(&stream)?;
        let (tx, rx) = mpsc::unbounded_channel();
        for (seq, msg) in s.events.iter().filter(|(seq, _)| *seq > last_seq) {
            let _ = tx.send((event_id(stream, *seq), msg.clone()));
        }
        if s.finished.is_none() {
            s.live = Some(tx);
        }
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_replays_missed_events_then_goes_live() {
        let log = ReplayLog::default();
        let (n, mut first) = log.open();
        log.append(n, json!(1));
        assert_eq!(first.try_recv().unwrap().0, event_id(n, 1));
        log.pause(n);
        log.append(n, json!(2));
        assert!(
            first.try_recv().is_err(),
            "a paused connection gets nothing more"
        );
        let mut again = log.resume(n, 1).unwrap();
        assert_eq!(again.try_recv().unwrap().1, json!(2));
        log.append(n, json!(3));
        assert_eq!(again.try_recv().unwrap().1, json!(3));
        log.finish(n);
        assert!(
            log.resume(n, 0).is_some(),
            "finished streams stay replayable for a while"
        );
        assert!(log.resume(n + 7, 0).is_none());
        assert_eq!(parse_event_id("12-3"), Some((12, 3)));
        assert_eq!(parse_event_id("x-3"), None);
    }
}
