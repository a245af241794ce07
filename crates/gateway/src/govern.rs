//! Governance at the data plane: every `tools/call`, `prompts/get` and
//! `resources/read` is decided by policy with its arguments, rate-limited, and
//! held for a human checkpoint when policy asks; lists show only what the
//! caller may use. Without authentication (loopback development) nothing here
//! applies, because there is no principal to decide for.

use crate::binding::Binding;
use crate::confirm;
use crate::dispatch::{Caller, Out};
use crate::observe::{self, DecisionNote};
use crate::vserver::ListKind;
use crate::Gateway;
use portcullis_config::DenyMode;
use portcullis_identity::Principal;
use portcullis_policy::{
    Ask, Checkpoint, Decision, LimitedCall, PendingApproval, PolicyRuntime, Subject, Target,
    ToolFlags,
};
use portcullis_protocol::jsonrpc::error_response;
use portcullis_protocol::ErrorCode;
use serde_json::{json, Value};
use std::net::IpAddr;

/// The caller of one request, as the authentication layer established it.
#[derive(Clone, Debug)]
pub struct Who {
    pub principal: Principal,
    pub ip: Option<IpAddr>,
}

impl Who {
    fn subject(&self) -> Subject<'_> {
        let u = &self.principal.user;
        Subject {
            user_id: &u.id,
            username: &u.username,
            email: u.email.as_deref(),
            service_owner: None,
            is_service: u.kind == "service",
            is_admin: u.is_admin,
            groups: &u.groups,
            client_id: self.principal.client_id(),
            source_ip: self.ip,
        }
    }
}

/// What a governed request uses, resolved to its member.
pub(crate) struct Use<'a> {
    pub kind: ListKind,
    /// Exposed name (tools, prompts) or URI (resources).
    pub exposed: &'a str,
    pub member: usize,
    pub upstream_name: &'a str,
}

/// How a call passed the gate, which matters for what comes back.
#[derive(Debug, Default)]
pub(crate) struct Passed {
    /// A 2026-07-28 caller confirmed: an upstream `input_required` result must
    /// carry that confirmation on into the retry.
    pub confirmed_modern: bool,
}

/// Unix seconds.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn target<'a>(binding: &'a Binding, u: &'a Use<'a>, item: Option<&'a Value>) -> Target<'a> {
    let vs = &binding.vs;
    let member = &vs.members[u.member];
    let server = member.upstream.name();
    match u.kind {
        ListKind::Tools => Target::Tool {
            virtual_server: &vs.name,
            server,
            name: u.exposed,
            upstream_name: u.upstream_name,
            flags: ToolFlags::from_annotations(item.and_then(|i| i.get("annotations"))),
            risk_tier: member.tools.get(u.upstream_name).and_then(|o| o.risk_tier),
        },
        ListKind::Prompts => Target::Prompt {
            virtual_server: &vs.name,
            server,
            name: u.exposed,
            upstream_name: u.upstream_name,
        },
        ListKind::Resources | ListKind::Templates => Target::Resource {
            virtual_server: &vs.name,
            server,
            uri: u.exposed,
        },
    }
}

/// Decide, limit and checkpoint one request. `Err` is the JSON-RPC answer
/// that replaces the call (an error, or a 2026-07-28 input-required result).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn gate(
    gw: &Gateway,
    caller: &Caller,
    who: Option<&Who>,
    u: &Use<'_>,
    item: Option<&Value>,
    msg: &mut Value,
    id: &Value,
    out: &Out,
) -> Result<Passed, Value> {
    let binding = caller.binding();
    observe::note(|n| {
        n.upstream = Some(binding.vs.members[u.member].upstream.name().to_owned());
        n.target = Some(u.exposed.to_owned());
        if u.kind != ListKind::Resources && u.kind != ListKind::Templates {
            n.upstream_target = Some(u.upstream_name.to_owned());
        }
    });
    let (Some(rt), Some(who)) = (gw.policy.as_deref(), who) else {
        return Ok(Passed::default());
    };
    let target = target(binding, u, item);
    let args = msg.pointer("/params/arguments").and_then(Value::as_object);
    let decision = rt.engine.decide(&Ask {
        subject: who.subject(),
        target,
        args,
        now: now(),
    });
    log_decision(who, &binding.vs.name, &target, &decision);
    observe::note(|n| {
        n.decision = Some(DecisionNote {
            allowed: decision.allowed,
            policies: decision.policies.clone(),
            errors: decision.errors.clone(),
            version: decision.version,
            ..Default::default()
        });
        n.hidden_denial = !decision.allowed && rt.on_deny == DenyMode::Hide;
    });
    if !decision.allowed {
        return Err(denial(rt, id, &target, &decision));
    }
    if matches!(u.kind, ListKind::Tools | ListKind::Prompts) {
        let user = &who.principal.user;
        let call = LimitedCall {
            user_id: &user.id,
            username: &user.username,
            groups: &user.groups,
            virtual_server: &binding.vs.name,
            tool: u.exposed,
        };
        if let Err(refusal) = rt.limits.admit(&call, now()) {
            observe::note(|n| {
                if let Some(d) = &mut n.decision {
                    d.limited_by = Some(refusal.limit.to_string());
                }
            });
            tracing::info!(user = %user.username, tool = u.exposed, limit = %refusal.limit, "call refused by a rate limit");
            return Err(portcullis_protocol::jsonrpc::error_response_with_data(
                id.clone(),
                ErrorCode::RateLimited,
                refusal.message.clone(),
                json!({"limit": refusal.limit, "kind": refusal.kind, "retryAfterSeconds": refusal.retry_after_secs}),
            ));
        }
    }
    let checkpoint = match decision.checkpoint {
        // A service account has nobody to ask: an approver decides instead.
        Some(Checkpoint::User) if who.principal.user.kind == "service" => {
            Some(Checkpoint::Approver)
        }
        c => c,
    };
    let Some(kind) = checkpoint else {
        return Ok(Passed::default());
    };
    let result = match kind {
        Checkpoint::Approver => approver(rt, who, &target, &decision, msg, id)
            .await
            .map(|_| Passed::default()),
        Checkpoint::User => match caller {
            Caller::Legacy(session) => confirm::ask_legacy(
                session,
                out,
                &target,
                args,
                rt.engine.checkpoint_timeout(),
                id,
            )
            .await
            .map(|_| Passed::default()),
            Caller::Modern { .. } => {
                gw.confirmations
                    .check_modern(who, &target, msg, id)
                    .map(|_| Passed {
                        confirmed_modern: true,
                    })
            }
        },
    };
    observe::note(|n| {
        if let Some(d) = &mut n.decision {
            d.checkpoint = Some(match kind {
                Checkpoint::User => "user",
                Checkpoint::Approver => "approver",
            });
            d.checkpoint_result = Some(checkpoint_result(kind, &result).to_owned());
        }
    });
    result
}

/// How a checkpoint ended, for the audit record.
fn checkpoint_result(kind: Checkpoint, result: &Result<Passed, Value>) -> &'static str {
    match (kind, result) {
        (Checkpoint::User, Ok(_)) => "confirmed",
        (Checkpoint::Approver, Ok(_)) => "approved",
        (_, Err(answer)) if answer.pointer("/result").is_some() => "pending",
        (Checkpoint::User, Err(_)) => "declined",
        (Checkpoint::Approver, Err(_)) => "refused",
    }
}

fn log_decision(who: &Who, vs: &str, target: &Target, d: &Decision) {
    let user = &who.principal.user.username;
    if d.allowed {
        tracing::debug!(target: "portcullis::decision", user = %user, virtual_server = vs, action = target.action(), item = target.label(), policies = ?d.policies, version = d.version, "allowed");
    } else {
        tracing::info!(target: "portcullis::decision", user = %user, virtual_server = vs, action = target.action(), item = target.label(), policies = ?d.policies, errors = ?d.errors, version = d.version, "denied");
    }
}

fn denial(rt: &PolicyRuntime, id: &Value, target: &Target, d: &Decision) -> Value {
    let what = match target {
        Target::Tool { .. } => "tool",
        Target::Prompt { .. } => "prompt",
        Target::Resource { .. } => "resource",
        Target::List { .. } => "virtual server",
    };
    match rt.on_deny {
        // Word for word what an unknown name gets, so a denial reveals nothing.
        DenyMode::Hide => error_response(
            id.clone(),
            ErrorCode::InvalidParams,
            format!("unknown {what}: {}", target.label()),
        ),
        DenyMode::Explain => portcullis_protocol::jsonrpc::error_response_with_data(
            id.clone(),
            ErrorCode::PolicyDenied,
            format!(
                "denied by policy: {what} {} ({})",
                target.label(),
                d.reason()
            ),
            json!({"decision": "deny", "policies": d.policies, "policyVersion": d.version}),
        ),
    }
}

async fn approver(
    rt: &PolicyRuntime,
    who: &Who,
    target: &Target<'_>,
    d: &Decision,
    msg: &Value,
    id: &Value,
) -> Result<(), Value> {
    let (approval_id, verdict) = rt.approvals.open(PendingApproval {
        id: String::new(),
        user: who.principal.user.username.clone(),
        virtual_server: target.virtual_server().to_owned(),
        tool: target.label().to_owned(),
        arguments: msg
            .pointer("/params/arguments")
            .cloned()
            .unwrap_or_else(|| json!({})),
        policies: d.policies.clone(),
        requested_at: now(),
    });
    tracing::info!(approval = %approval_id, user = %who.principal.user.username, item = target.label(), "call waits for an approver");
    let refused = |why: String| error_response(id.clone(), ErrorCode::ConfirmationRefused, why);
    match tokio::time::timeout(rt.engine.checkpoint_timeout(), verdict).await {
        Ok(Ok(v)) if v.approved => {
            tracing::info!(approval = %approval_id, by = %v.by, "approved");
            Ok(())
        }
        Ok(Ok(v)) => Err(refused(format!(
            "{} was refused by approver {} (approval {approval_id})",
            target.label(),
            v.by
        ))),
        _ => {
            rt.approvals.withdraw(&approval_id);
            Err(refused(format!(
                "{} needs an approver's decision, and none came in time (approval {approval_id})",
                target.label()
            )))
        }
    }
}

/// The list items this caller may use (none when `Action::"list"` is
/// forbidden to them), with a key that changes with the caller and the policy
/// version, for cursors. `None` when the caller is not governed.
pub(crate) fn filter_list(
    gw: &Gateway,
    binding: &Binding,
    who: Option<&Who>,
    kind: ListKind,
    catalog: &crate::binding::Catalog,
) -> Option<(Vec<Value>, u64)> {
    let (Some(rt), Some(who)) = (gw.policy.as_deref(), who) else {
        return None;
    };
    let compiled = rt.engine.current();
    let view = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        who.principal.subject().hash(&mut h);
        compiled.version.hash(&mut h);
        h.finish()
    };
    let subject = who.subject();
    let t = now();
    let list_allowed = rt
        .engine
        .decide_with(
            &compiled,
            &Ask {
                subject,
                target: Target::List {
                    virtual_server: &binding.vs.name,
                },
                args: None,
                now: t,
            },
        )
        .allowed;
    if !list_allowed {
        return Some((Vec::new(), view));
    }
    let key = kind.key();
    let kept = catalog
        .items
        .iter()
        .filter(|item| {
            let Some(exposed) = item.get(key).and_then(Value::as_str) else {
                return false;
            };
            let Some((member, upstream_name)) = catalog.index.get(exposed) else {
                return false;
            };
            let u = Use {
                kind,
                exposed,
                member: *member,
                upstream_name,
            };
            let ask = Ask {
                subject,
                target: target(binding, &u, Some(item)),
                args: None,
                now: t,
            };
            rt.engine.visible(&compiled, &ask)
        })
        .cloned()
        .collect();
    Some((kept, view))
}

/// After a confirmed 2026-07-28 call: the upstream wants more input, so the
/// state the client echoes must say the user already confirmed.
pub(crate) fn carry_confirmation(
    gw: &Gateway,
    who: &Who,
    binding: &Binding,
    u: &Use<'_>,
    item: Option<&Value>,
    args: Option<&Value>,
    resp: &mut Value,
) {
    let target = target(binding, u, item);
    gw.confirmations
        .carry(who, &target, args.and_then(Value::as_object), resp);
}

/// Whether the caller may see one item (as in a filtered list); always true
/// for ungoverned callers.
pub(crate) fn may_see(gw: &Gateway, binding: &Binding, who: Option<&Who>, u: &Use<'_>) -> bool {
    let (Some(rt), Some(who)) = (gw.policy.as_deref(), who) else {
        return true;
    };
    let ask = Ask {
        subject: who.subject(),
        target: target(binding, u, None),
        args: None,
        now: now(),
    };
    rt.engine.visible(&rt.engine.current(), &ask)
}
