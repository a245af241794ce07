//! Calls waiting for an approver: opened by the gateway when a policy asks for
//! `@checkpoint("approver")`, listed and decided through the admin API.
//!
//! Pending approvals live in the replica that holds the waiting call; an
//! approver's answer reaches it through this queue.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PendingApproval {
    pub id: String,
    pub user: String,
    pub virtual_server: String,
    pub tool: String,
    /// The arguments the call will run with, so the approver knows what they approve.
    pub arguments: serde_json::Value,
    pub policies: Vec<String>,
    pub requested_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub approved: bool,
    pub by: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no pending approval {0}")]
    NotFound(String),
}

#[derive(Default)]
pub struct Approvals {
    pending: Mutex<HashMap<String, (PendingApproval, oneshot::Sender<Verdict>)>>,
}

impl Approvals {
    /// Queue a call; the receiver resolves when someone decides.
    pub fn open(&self, mut request: PendingApproval) -> (String, oneshot::Receiver<Verdict>) {
        let id = new_id();
        request.id = id.clone();
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.clone(), (request, tx));
        (id, rx)
    }

    /// Remove a request nobody will wait for any more (timeout, cancellation).
    pub fn withdraw(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn list(&self) -> Vec<PendingApproval> {
        let mut v: Vec<PendingApproval> = self.lock().values().map(|(p, _)| p.clone()).collect();
        v.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        v
    }

    pub fn decide(
        &self,
        id: &str,
        approved: bool,
        by: &str,
    ) -> Result<PendingApproval, ApprovalError> {
        let (request, tx) = self
            .lock()
            .remove(id)
            .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
        // The caller may have given up meanwhile; the decision is still recorded.
        let _ = tx.send(Verdict {
            approved,
            by: by.to_owned(),
        });
        Ok(request)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (PendingApproval, oneshot::Sender<Verdict>)>>
    {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn new_id() -> String {
    use std::fmt::Write;
    let mut bytes = [0u8; 12];
    getrandom(&mut bytes);
    let mut s = String::from("apr_");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Unpredictable ids: an approval id is not a secret (decisions need the admin
/// scope), but guessable ids would leak how many calls wait.
fn getrandom(buf: &mut [u8]) {
    use rand::RngCore;
    rand::thread_rng().fill_bytes(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decisions_reach_the_waiting_call() {
        let a = Approvals::default();
        let (id, rx) = a.open(PendingApproval {
            id: String::new(),
            user: "alice".into(),
            virtual_server: "v".into(),
            tool: "deploy".into(),
            arguments: serde_json::json!({}),
            policies: vec![],
            requested_at: 1,
        });
        assert_eq!(a.list().len(), 1);
        a.decide(&id, true, "bob").unwrap();
        assert!(rx.await.unwrap().approved);
        assert!(a.list().is_empty());
        assert_eq!(
            a.decide(&id, false, "bob").unwrap_err(),
            ApprovalError::NotFound(id)
        );
    }
}
