//! Era bridging for a legacy client in front of a 2026-07-28 upstream: an
//! input-required result becomes ordinary server→client requests on the client's
//! response stream, and the answers go back upstream on the retry.

use crate::dispatch::{Caller, Out};
use crate::session::Waiter;
use serde_json::{json, Map, Value};
use std::time::Duration;
use tokio::sync::oneshot;

pub const MAX_ROUNDS: usize = 10;
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

pub fn is_input_required(resp: &Value) -> bool {
    resp.pointer("/result/resultType").and_then(Value::as_str) == Some("input_required")
}

fn capability_for(method: &str) -> Option<&'static str> {
    match method {
        "elicitation/create" => Some("elicitation"),
        "sampling/createMessage" => Some("sampling"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// Ask the client every embedded input request and collect the results by key.
pub async fn gather_inputs(
    caller: &Caller,
    resp: &Value,
    out: &Out,
) -> Result<Map<String, Value>, String> {
    let Caller::Legacy(session) = caller else {
        return Err("input bridging needs a legacy session".into());
    };
    let requests = resp
        .pointer("/result/inputRequests")
        .and_then(Value::as_object)
        .ok_or("input_required result without inputRequests")?;
    let mut answers = Map::new();
    for (key, req) in requests {
        let method = req
            .get("method")
            .and_then(Value::as_str)
            .ok_or("input request without method")?;
        let cap =
            capability_for(method).ok_or_else(|| format!("unsupported input request {method}"))?;
        if session.client_capabilities.get(cap).is_none() {
            return Err(format!(
                "the upstream needs the client's {cap} capability, which it did not declare"
            ));
        }
        let (tx, rx) = oneshot::channel();
        let gw_id = session.register(Waiter::Gateway(tx));
        let params = req.get("params").cloned().unwrap_or_else(|| json!({}));
        let ask = json!({"jsonrpc": "2.0", "id": gw_id, "method": method, "params": params});
        if out.send(ask).is_err() {
            session.forget_waiter(&gw_id);
            return Err("the client's stream closed".into());
        }
        let answer = match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(a)) => a,
            _ => {
                session.forget_waiter(&gw_id);
                return Err(format!("the client did not answer {method}"));
            }
        };
        match answer.get("result") {
            Some(r) => {
                answers.insert(key.clone(), r.clone());
            }
            None => {
                let why = answer
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                return Err(format!("the client refused {method}: {why}"));
            }
        }
    }
    Ok(answers)
}

/// Put the answers and the upstream's opaque state on the request for its retry.
pub fn prepare_retry(msg: &mut Value, resp: &Value, answers: Map<String, Value>) {
    let Some(params) = msg.get_mut("params").and_then(Value::as_object_mut) else {
        return;
    };
    params.insert("inputResponses".into(), Value::Object(answers));
    match resp.pointer("/result/requestState") {
        Some(state) => {
            params.insert("requestState".into(), state.clone());
        }
        None => {
            params.remove("requestState");
        }
    }
}
