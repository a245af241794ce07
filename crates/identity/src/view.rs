//! The in-memory identity view the hot path reads, built from a store snapshot.

use crate::keys::KeySet;
use crate::principal::{TokenView, UserView};
use crate::secrets;
use portcullis_store::identity::Snapshot;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::watch;

pub(crate) struct View {
    pub users: HashMap<String, Arc<UserView>>,
    pub tokens: HashMap<[u8; 32], Arc<TokenView>>,
    pub token_ids: HashSet<String>,
    pub revoked_families: HashSet<String>,
    pub keys: KeySet,
}

impl Default for View {
    fn default() -> Self {
        View {
            users: HashMap::new(),
            tokens: HashMap::new(),
            token_ids: HashSet::new(),
            revoked_families: HashSet::new(),
            keys: KeySet::from_rows(&[]),
        }
    }
}

impl View {
    pub fn build(
        snap: Snapshot,
        admin_groups: &[String],
        watches: &mut HashMap<String, Arc<watch::Sender<u64>>>,
    ) -> View {
        let mut groups: HashMap<&str, Vec<String>> = HashMap::new();
        for (user, group) in &snap.memberships {
            groups.entry(user.as_str()).or_default().push(group.clone());
        }
        let mut users = HashMap::with_capacity(snap.users.len());
        for u in &snap.users {
            let mut g = groups.remove(u.id.as_str()).unwrap_or_default();
            g.sort();
            let is_admin = u.is_admin || g.iter().any(|x| admin_groups.contains(x));
            let changes = watches
                .entry(u.id.clone())
                .or_insert_with(|| Arc::new(watch::channel(0).0))
                .clone();
            users.insert(
                u.id.clone(),
                Arc::new(UserView {
                    id: u.id.clone(),
                    username: u.username.clone(),
                    kind: u.kind.clone(),
                    email: u.email.clone(),
                    active: u.active,
                    is_admin,
                    groups: g,
                    changes,
                }),
            );
        }
        // Users that no longer exist keep their watch until the map is rebuilt
        // from scratch; drop those nobody listens to.
        watches.retain(|id, w| users.contains_key(id) || w.receiver_count() > 0);
        let tokens: HashMap<[u8; 32], Arc<TokenView>> = snap
            .tokens
            .iter()
            .filter_map(|t| {
                let digest = secrets::from_hex(&t.secret_hash)?;
                let scopes: Vec<String> = serde_json::from_str(&t.scopes).unwrap_or_default();
                Some((
                    digest,
                    Arc::new(TokenView {
                        id: t.id.clone(),
                        user_id: t.user_id.clone(),
                        name: t.name.clone(),
                        scopes,
                        expires_at: t.expires_at,
                    }),
                ))
            })
            .collect();
        let token_ids = tokens.values().map(|t| t.id.clone()).collect();
        View {
            users,
            tokens,
            token_ids,
            revoked_families: snap
                .revoked_families
                .into_iter()
                .map(|(id, _)| id)
                .collect(),
            keys: KeySet::from_rows(&snap.keys),
        }
    }
}
