//! Answering callers once their group is durable, with one wake-up per
//! runtime per group rather than one per record.
//!
//! The gateway runs one single-threaded tokio runtime per core. Waking a task
//! of such a runtime from another thread (the committer or the syncer) costs
//! a system call and often a context switch, and a group of a dozen records
//! did that a dozen times. Each runtime thread that records therefore gets a
//! relay task: the writer's threads hand it all of its callers' answers at
//! once and wake it once; it answers them from inside the runtime, where a
//! wake-up is a push onto a local queue.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{oneshot, Notify};

pub(crate) type Answer = Result<i64, String>;
type Queued = Vec<(oneshot::Sender<Answer>, Answer)>;

/// Where one caller's answer goes.
pub(crate) struct Done {
    tx: oneshot::Sender<Answer>,
    relay: Option<Arc<Relay>>,
    /// When the record was handed to the writer.
    queued: Instant,
}

impl Done {
    /// How long the caller has waited for its record so far.
    pub(crate) fn waited(&self) -> Duration {
        self.queued.elapsed()
    }
}

pub(crate) struct Relay {
    /// Answers waiting for the relay task, or `None` once that task is gone
    /// (its runtime shut down): answers are then sent directly.
    pending: Mutex<Option<Queued>>,
    notify: Notify,
}

thread_local! {
    static LOCAL: RefCell<Option<Arc<Relay>>> = const { RefCell::new(None) };
}

/// A caller's end and the writer's end of one answer.
pub(crate) fn channel() -> (Done, oneshot::Receiver<Answer>) {
    let (tx, rx) = oneshot::channel();
    (
        Done {
            tx,
            relay: local_relay(),
            queued: Instant::now(),
        },
        rx,
    )
}

/// Send every caller its answer (`answer(i)` for the i-th), waking each
/// runtime involved once.
pub(crate) fn answer_all(dones: Vec<Done>, answer: impl Fn(usize) -> Answer) {
    let mut woken: Vec<Arc<Relay>> = Vec::new();
    for (i, done) in dones.into_iter().enumerate() {
        let a = answer(i);
        let Some(relay) = done.relay else {
            let _ = done.tx.send(a);
            continue;
        };
        let queued = match relay.pending.lock() {
            Ok(mut p) => match p.as_mut() {
                Some(queue) => {
                    queue.push((done.tx, a));
                    None
                }
                None => Some((done.tx, a)),
            },
            Err(_) => Some((done.tx, a)),
        };
        match queued {
            Some((tx, a)) => {
                let _ = tx.send(a);
            }
            None => {
                if !woken.iter().any(|r| Arc::ptr_eq(r, &relay)) {
                    woken.push(relay);
                }
            }
        }
    }
    for relay in woken {
        relay.notify.notify_one();
    }
}

/// This thread's relay, started on first use. Only single-threaded runtimes
/// get one: a multi-threaded runtime's tasks move between threads, and its
/// scheduler already wakes an idle worker only when one is needed.
fn local_relay() -> Option<Arc<Relay>> {
    let handle = Handle::try_current().ok()?;
    if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return None;
    }
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        if let Some(r) = local.as_ref() {
            if r.pending.lock().map(|p| p.is_some()).unwrap_or(false) {
                return Some(r.clone());
            }
        }
        let relay = Arc::new(Relay {
            pending: Mutex::new(Some(Vec::new())),
            notify: Notify::new(),
        });
        let task = Closer(relay.clone());
        handle.spawn(async move {
            loop {
                task.0.notify.notified().await;
                let batch = match task.0.pending.lock() {
                    Ok(mut p) => p.as_mut().map(std::mem::take).unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                for (tx, a) in batch {
                    let _ = tx.send(a);
                }
            }
        });
        *local = Some(relay.clone());
        Some(relay)
    })
}

/// Owned by the relay task: when the task is dropped (its runtime ends), the
/// answers it still holds are sent and later ones go directly.
struct Closer(Arc<Relay>);

impl Drop for Closer {
    fn drop(&mut self) {
        let left = match self.0.pending.lock() {
            Ok(mut p) => p.take().unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        for (tx, a) in left {
            let _ = tx.send(a);
        }
    }
}
