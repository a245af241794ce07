//! The user's confirmation of a high-impact call: an `elicitation/create`
//! request on a legacy session, or an input-required result for 2026-07-28
//! callers whose `requestState` is HMAC-protected, bound to the caller and the
//! exact call, short-lived and single-use.

use crate::dispatch::Out;
use crate::govern::Who;
use crate::session::{Session, Waiter};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use portcullis_policy::Target;
use portcullis_protocol::era::META_CLIENT_CAPABILITIES;
use portcullis_protocol::jsonrpc::{error_response, result_response};
use portcullis_protocol::ErrorCode;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// The key of the gateway's own entry in `inputRequests`/`inputResponses`.
pub const INPUT_KEY: &str = "portcullis_confirmation";
const STATE_PREFIX: &str = "pcx1.";
/// How long a 2026-07-28 client has to come back with the answer.
const STATE_TTL_SECS: i64 = 600;

use crate::govern::now;

fn summary(target: &Target, args: Option<&Map<String, Value>>) -> String {
    let what = match target {
        Target::Tool { .. } => "call the tool",
        Target::Prompt { .. } => "get the prompt",
        _ => "read",
    };
    let mut args = args
        .map(|a| serde_json::to_string(a).unwrap_or_default())
        .unwrap_or_else(|| "{}".into());
    if args.len() > 600 {
        let mut cut = 600;
        while !args.is_char_boundary(cut) {
            cut -= 1;
        }
        args.truncate(cut);
        args.push('…');
    }
    format!(
        "Portcullis: this needs your confirmation. Allow the assistant to {what} \"{}\" on \"{}\" with arguments {args}?",
        target.label(),
        target.virtual_server()
    )
}

fn elicitation(target: &Target, args: Option<&Map<String, Value>>) -> Value {
    json!({
        "message": summary(target, args),
        "requestedSchema": {
            "type": "object",
            "properties": {
                "confirm": {"type": "boolean", "title": "Allow this call", "default": false}
            },
            "required": ["confirm"]
        }
    })
}

/// Accepted with `confirm: true`, and nothing less.
fn accepted(result: &Value) -> bool {
    result.get("action").and_then(Value::as_str) == Some("accept")
        && result.pointer("/content/confirm").and_then(Value::as_bool) == Some(true)
}

fn refused(id: &Value, target: &Target, why: &str) -> Value {
    error_response(
        id.clone(),
        ErrorCode::ConfirmationRefused,
        format!("{} was not run: {why}", target.label()),
    )
}

/// Ask a legacy client's user and wait for the answer.
pub(crate) async fn ask_legacy(
    session: &Arc<Session>,
    out: &Out,
    target: &Target<'_>,
    args: Option<&Map<String, Value>>,
    timeout: Duration,
    id: &Value,
) -> Result<(), Value> {
    if session.client_capabilities.get("elicitation").is_none() {
        return Err(refused(
            id,
            target,
            "it needs your confirmation, and this client does not support elicitation",
        ));
    }
    let (tx, rx) = oneshot::channel();
    let gw_id = session.register(Waiter::Gateway(tx));
    let ask = json!({"jsonrpc": "2.0", "id": gw_id, "method": "elicitation/create",
                     "params": elicitation(target, args)});
    if out.send(ask).is_err() {
        session.forget_waiter(&gw_id);
        return Err(refused(id, target, "the client's stream closed"));
    }
    let answer = match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(a)) => a,
        _ => {
            session.forget_waiter(&gw_id);
            return Err(refused(id, target, "no confirmation came in time"));
        }
    };
    match answer.get("result") {
        Some(r) if accepted(r) => Ok(()),
        Some(_) => Err(refused(id, target, "the user declined")),
        None => Err(refused(id, target, "the client could not ask the user")),
    }
}

/// Issues and checks `requestState` tokens for 2026-07-28 confirmations.
pub struct Confirmations {
    key: [u8; 32],
    /// Nonces of confirmations already used, with their expiry.
    used: Mutex<HashMap<String, i64>>,
}

impl Default for Confirmations {
    fn default() -> Self {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Confirmations {
            key,
            used: Mutex::new(HashMap::new()),
        }
    }
}

impl Confirmations {
    fn mac(&self, payload: &str) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(payload.as_bytes());
        B64.encode(m.finalize().into_bytes())
    }

    fn digest(who: &Who, target: &Target, args: Option<&Map<String, Value>>) -> String {
        let mut h = Sha256::new();
        for part in [
            who.principal.subject(),
            target.virtual_server(),
            target.action(),
            target.label(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        // serde_json maps are ordered, so this serialisation is canonical.
        h.update(
            args.map(|a| serde_json::to_string(a).unwrap_or_default())
                .unwrap_or_default()
                .as_bytes(),
        );
        B64.encode(h.finalize())
    }

    fn issue(&self, kind: &str, digest: &str, inner: Option<&Value>) -> String {
        use rand::RngCore;
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut payload =
            json!({"k": kind, "n": B64.encode(nonce), "e": now() + STATE_TTL_SECS, "d": digest});
        if let Some(inner) = inner {
            payload["u"] = inner.clone();
        }
        let body = B64.encode(payload.to_string());
        let mac = self.mac(&body);
        format!("{STATE_PREFIX}{body}.{mac}")
    }

    fn open(&self, token: &str, digest: &str) -> Option<Value> {
        let rest = token.strip_prefix(STATE_PREFIX)?;
        let (body, mac) = rest.split_once('.')?;
        let expected = self.mac(body);
        if !constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
            return None;
        }
        let payload: Value = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        if payload.get("e").and_then(Value::as_i64)? < now() {
            return None;
        }
        if payload.get("d").and_then(Value::as_str)? != digest {
            return None;
        }
        Some(payload)
    }

    /// Pass a confirmed retry (stripping the gateway's own answer and state so
    /// the upstream never sees them) or answer with the question.
    pub(crate) fn check_modern(
        &self,
        who: &Who,
        target: &Target<'_>,
        msg: &mut Value,
        id: &Value,
    ) -> Result<(), Value> {
        let args = msg.pointer("/params/arguments").and_then(Value::as_object);
        let digest = Self::digest(who, target, args);
        let state = msg
            .pointer("/params/requestState")
            .and_then(Value::as_str)
            .filter(|s| s.starts_with(STATE_PREFIX))
            .map(str::to_owned);
        let Some(state) = state else {
            let can_elicit = msg
                .pointer("/params/_meta")
                .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
                .and_then(|c| c.get("elicitation"))
                .is_some();
            if !can_elicit {
                return Err(error_response(
                    id.clone(),
                    ErrorCode::MissingRequiredClientCapability,
                    format!(
                        "{} needs the user's confirmation: the client must declare the elicitation capability",
                        target.label()
                    ),
                ));
            }
            let request =
                json!({"method": "elicitation/create", "params": elicitation(target, args)});
            return Err(result_response(
                id.clone(),
                json!({
                    "resultType": "input_required",
                    "inputRequests": {INPUT_KEY: request},
                    "requestState": self.issue("ask", &digest, None),
                }),
            ));
        };
        let Some(payload) = self.open(&state, &digest) else {
            return Err(error_response(
                id.clone(),
                ErrorCode::InvalidParams,
                "requestState is invalid, expired or belongs to another call; call again without it",
            ));
        };
        let params = msg
            .get_mut("params")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                error_response(id.clone(), ErrorCode::InvalidParams, "params missing")
            })?;
        match payload.get("k").and_then(Value::as_str) {
            Some("ok") => {
                match payload.get("u") {
                    Some(inner) => params.insert("requestState".into(), inner.clone()),
                    None => params.remove("requestState"),
                };
                Ok(())
            }
            Some("ask") => {
                let answer = params
                    .get_mut("inputResponses")
                    .and_then(Value::as_object_mut)
                    .and_then(|r| r.remove(INPUT_KEY));
                if params
                    .get("inputResponses")
                    .and_then(Value::as_object)
                    .is_some_and(Map::is_empty)
                {
                    params.remove("inputResponses");
                }
                params.remove("requestState");
                let nonce = payload.get("n").and_then(Value::as_str).unwrap_or_default();
                if !self.first_use(nonce, payload.get("e").and_then(Value::as_i64).unwrap_or(0)) {
                    return Err(refused(id, target, "this confirmation was already used"));
                }
                match answer {
                    Some(a) if accepted(&a) => Ok(()),
                    Some(_) => Err(refused(id, target, "the user declined")),
                    None => Err(refused(id, target, "the confirmation answer is missing")),
                }
            }
            _ => Err(error_response(
                id.clone(),
                ErrorCode::InvalidParams,
                "requestState is invalid",
            )),
        }
    }

    /// A confirmed call whose upstream asks for more input: carry the
    /// confirmation on in the state the client echoes back.
    pub(crate) fn carry(
        &self,
        who: &Who,
        target: &Target<'_>,
        args: Option<&Map<String, Value>>,
        resp: &mut Value,
    ) {
        let digest = Self::digest(who, target, args);
        let Some(result) = resp.get_mut("result").and_then(Value::as_object_mut) else {
            return;
        };
        let inner = result.get("requestState").cloned();
        let token = self.issue("ok", &digest, inner.as_ref());
        result.insert("requestState".into(), Value::from(token));
    }

    fn first_use(&self, nonce: &str, expiry: i64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let t = now();
        if used.len() > 10_000 {
            used.retain(|_, e| *e >= t);
        }
        used.insert(nonce.to_owned(), expiry).is_none()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
