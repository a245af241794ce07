//! The policy decision point: the loaded policy set, sliced per resource so a
//! decision only evaluates the policies that can apply, swapped atomically on
//! reload (an invalid set never replaces a valid one).

use crate::derive::Patterns;
use crate::facts::{self, Subject, Target};
use crate::schema::{self, ArgumentUse};
use crate::source::{parse_all, PolicyInfo, PolicySource, SourceError};
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
};
use portcullis_config::Config;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// One question to the engine.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub subject: Subject<'a>,
    pub target: Target<'a>,
    /// Tool or prompt arguments, as the upstream will receive them.
    pub args: Option<&'a Map<String, Value>>,
    /// Unix seconds.
    pub now: i64,
}

/// Who must confirm a call before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpoint {
    /// The calling user, through elicitation or an input-required result.
    User,
    /// An approver, through the admin API.
    Approver,
}

/// The answer, with the policies that decided it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// Satisfied permits when allowed; satisfied forbids (or erroring forbids)
    /// when denied; empty when nothing permitted the request.
    pub policies: Vec<String>,
    /// Evaluation errors, by policy id.
    pub errors: Vec<String>,
    pub checkpoint: Option<Checkpoint>,
    /// Version of the policy set that decided.
    pub version: u64,
}

impl Decision {
    /// A short reason for logs and error data.
    pub fn reason(&self) -> String {
        if self.allowed {
            format!("permitted by {}", self.policies.join(", "))
        } else if self.policies.is_empty() {
            "no policy permits it".into()
        } else {
            format!("forbidden by {}", self.policies.join(", "))
        }
    }
}

/// A loaded, validated policy set.
pub struct Compiled {
    pub version: u64,
    set: PolicySet,
    used: ArgumentUse,
    info: Vec<PolicyInfo>,
    checkpoints: HashMap<PolicyId, Checkpoint>,
    /// Policies whose resource scope names an entity (`==` or `in`).
    by_entity: HashMap<EntityUid, Vec<PolicyId>>,
    /// Policies with an open resource scope.
    general: Vec<PolicyId>,
    /// Per (action, resource) slices, built on first use.
    slices: RwLock<HashMap<(&'static str, EntityUid), Arc<ResourceSlice>>>,
}

const MAX_CACHED_SLICES: usize = 50_000;

impl Compiled {
    pub fn policies(&self) -> &[PolicyInfo] {
        &self.info
    }

    pub fn arguments(&self) -> &ArgumentUse {
        &self.used
    }

    /// The policies that can apply to this principal, action and resource.
    /// Cedar has no index, so evaluation cost grows with every policy in the
    /// set it is given: slice by resource scope first, then by principal scope.
    fn slice(
        &self,
        action: &'static str,
        resource: &EntityUid,
        ancestors: &[EntityUid],
        subject: &Subject,
    ) -> Arc<PolicySet> {
        let by_resource = self.resource_slice(action, resource, ancestors);
        by_resource.for_principal(subject)
    }

    fn resource_slice(
        &self,
        action: &'static str,
        resource: &EntityUid,
        ancestors: &[EntityUid],
    ) -> Arc<ResourceSlice> {
        let key = (action, resource.clone());
        if let Some(s) = self
            .slices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return s.clone();
        }
        let action_uid = facts::uid(&facts::types().action, action);
        let mut ids: Vec<&PolicyId> = self.general.iter().collect();
        for e in std::iter::once(resource).chain(ancestors) {
            if let Some(v) = self.by_entity.get(e) {
                ids.extend(v);
            }
        }
        let mut slice = ResourceSlice::default();
        for id in ids {
            if let Some(p) = self.set.policy(id) {
                if applies_to_action(p, &action_uid) {
                    slice.add(p.clone());
                }
            }
        }
        if action == "list" {
            // Lists need no permit: a forbid can still hide a whole catalog.
            if let Ok(p) = Policy::parse(
                Some(PolicyId::new("builtin:list")),
                r#"permit(principal, action == Action::"list", resource);"#,
            ) {
                slice.add(p);
            }
        }
        let slice = Arc::new(slice);
        let mut slices = self.slices.write().unwrap_or_else(|p| p.into_inner());
        if slices.len() >= MAX_CACHED_SLICES {
            slices.clear();
        }
        slices.insert(key, slice.clone());
        slice
    }
}

/// One resource's policies, split by principal scope. Groups are flat (a
/// group is never a member of another), so `principal in Group::"g"` can only
/// hold for members of `g`, and `principal == X` only for `X`.
#[derive(Default)]
struct ResourceSlice {
    any: Vec<Policy>,
    by_group: HashMap<String, Vec<Policy>>,
    by_principal: HashMap<EntityUid, Vec<Policy>>,
    /// Policy sets per relevant principal key, built on first use.
    sets: RwLock<HashMap<String, Arc<PolicySet>>>,
}

const MAX_SETS_PER_SLICE: usize = 4096;

impl ResourceSlice {
    fn add(&mut self, p: Policy) {
        let group_type = &facts::types().group;
        let scope = match p.principal_constraint() {
            PrincipalConstraint::In(e) | PrincipalConstraint::IsIn(_, e) => Some(e),
            PrincipalConstraint::Eq(e) => Some(e),
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
        };
        match scope {
            Some(e) if e.type_name() == group_type => self
                .by_group
                .entry(e.id().unescaped().to_owned())
                .or_default()
                .push(p),
            Some(e) => self.by_principal.entry(e).or_default().push(p),
            None => self.any.push(p),
        }
    }

    fn for_principal(&self, subject: &Subject) -> Arc<PolicySet> {
        let principal = facts::principal_uid(subject);
        let mut key = String::new();
        for g in subject.groups {
            if self.by_group.contains_key(g) {
                key.push_str(g);
                key.push('\0');
            }
        }
        let personal = self.by_principal.contains_key(&principal);
        if personal {
            key.push_str(subject.user_id);
        }
        if let Some(s) = self
            .sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return s.clone();
        }
        let mut set = PolicySet::new();
        let groups = subject.groups.iter().filter_map(|g| self.by_group.get(g));
        let own = personal
            .then(|| self.by_principal.get(&principal))
            .flatten();
        for p in self
            .any
            .iter()
            .chain(groups.flatten())
            .chain(own.into_iter().flatten())
        {
            // A policy can reach here twice only through a duplicated group name.
            let _ = set.add(p.clone());
        }
        let set = Arc::new(set);
        let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
        if sets.len() >= MAX_SETS_PER_SLICE {
            sets.clear();
        }
        sets.insert(key, set.clone());
        set
    }
}

fn applies_to_action(p: &Policy, action: &EntityUid) -> bool {
    match p.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action),
    }
}

pub struct PolicyEngine {
    current: RwLock<Arc<Compiled>>,
    servers: HashMap<String, (Entity, i64)>,
    declared: BTreeMap<String, portcullis_config::ArgumentType>,
    patterns: Patterns,
    rules: portcullis_config::CheckpointRules,
    authorizer: Authorizer,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Config(String),
    #[error("invalid policies:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<SourceError>),
}

impl PolicyEngine {
    /// An engine with no policies (everything denied) until `load`.
    pub fn new(config: &Config) -> Result<PolicyEngine, PolicyError> {
        let mut member_of: HashMap<&str, Vec<String>> = HashMap::new();
        for vs in &config.virtual_servers {
            for m in &vs.upstreams {
                member_of
                    .entry(&m.upstream)
                    .or_default()
                    .push(vs.name.clone());
            }
        }
        let mut servers = HashMap::new();
        for up in &config.upstreams {
            let vss = member_of.get(up.name.as_str()).cloned().unwrap_or_default();
            let entity = facts::server_entity(&up.name, &up.catalog, &vss).ok_or_else(|| {
                PolicyError::Config(format!("upstream {:?}: catalog attributes", up.name))
            })?;
            let tier = up
                .catalog
                .risk_tier
                .map_or(facts::DEFAULT_RISK_TIER, i64::from);
            servers.insert(up.name.clone(), (entity, tier));
        }
        let patterns = Patterns::compile(&config.policy.patterns).map_err(PolicyError::Config)?;
        let engine = PolicyEngine {
            current: RwLock::new(Arc::new(Compiled::empty())),
            servers,
            declared: config.policy.arguments.clone(),
            patterns,
            rules: config.policy.checkpoint.clone(),
            authorizer: Authorizer::new(),
        };
        Ok(engine)
    }

    pub fn current(&self) -> Arc<Compiled> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Parse and validate without installing: what `load` would do.
    pub fn compile(&self, sources: &[PolicySource], version: u64) -> Result<Compiled, PolicyError> {
        let parsed = parse_all(sources).map_err(PolicyError::Invalid)?;
        let used = ArgumentUse::scan(&parsed);
        let schema_text = schema::schema_text(&used, &self.declared);
        let schema = schema::build(&schema_text).map_err(|e| PolicyError::Invalid(vec![e]))?;
        let mut set = PolicySet::new();
        for p in &parsed {
            set.add(p.policy.clone()).map_err(|e| {
                PolicyError::Invalid(vec![SourceError {
                    origin: p.origin.clone(),
                    line: p.line,
                    column: 1,
                    message: e.to_string(),
                }])
            })?;
        }
        let texts: BTreeMap<String, String> = sources
            .iter()
            .map(|s| (s.origin.clone(), s.text.clone()))
            .collect();
        let errors = schema::validate(&schema, &set, &parsed, &texts);
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }
        let mut checkpoints = HashMap::new();
        let mut info = Vec::with_capacity(parsed.len());
        let mut by_entity: HashMap<EntityUid, Vec<PolicyId>> = HashMap::new();
        let mut general = Vec::new();
        for p in &parsed {
            let id = p.policy.id().clone();
            let checkpoint = p.policy.annotation("checkpoint").map(str::to_owned);
            if let Some(c) = &checkpoint {
                let kind = match c.as_str() {
                    "user" | "" => Checkpoint::User,
                    "approver" => Checkpoint::Approver,
                    other => {
                        return Err(PolicyError::Invalid(vec![SourceError {
                            origin: p.origin.clone(),
                            line: p.line,
                            column: 1,
                            message: format!(
                                "@checkpoint({other:?}): use \"user\" or \"approver\""
                            ),
                        }]))
                    }
                };
                if p.policy.effect() == Effect::Forbid {
                    return Err(PolicyError::Invalid(vec![SourceError {
                        origin: p.origin.clone(),
                        line: p.line,
                        column: 1,
                        message: "@checkpoint only makes sense on a permit".into(),
                    }]));
                }
                checkpoints.insert(id.clone(), kind);
            }
            match p.policy.resource_constraint() {
                ResourceConstraint::Eq(e)
                | ResourceConstraint::In(e)
                | ResourceConstraint::IsIn(_, e) => {
                    by_entity.entry(e).or_default().push(id.clone())
                }
                ResourceConstraint::Any | ResourceConstraint::Is(_) => general.push(id.clone()),
            }
            info.push(PolicyInfo {
                id: id.to_string(),
                effect: match p.policy.effect() {
                    Effect::Permit => "permit",
                    Effect::Forbid => "forbid",
                },
                origin: p.origin.clone(),
                line: p.line,
                checkpoint,
                text: p.policy.to_string(),
            });
        }
        Ok(Compiled {
            version,
            set,
            used,
            info,
            checkpoints,
            by_entity,
            general,
            slices: RwLock::new(HashMap::new()),
        })
    }

    /// Install a new policy set, or keep the current one and say why not.
    pub fn load(&self, sources: &[PolicySource]) -> Result<Arc<Compiled>, PolicyError> {
        let next = self.current().version + 1;
        let compiled = Arc::new(self.compile(sources, next)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = compiled.clone();
        Ok(compiled)
    }

    /// Decide one call. Default deny; `forbid` wins; a `forbid` that fails to
    /// evaluate denies (fail closed), a `permit` that fails is ignored.
    pub fn decide(&self, ask: &Ask) -> Decision {
        self.decide_with(&self.current(), ask)
    }

    pub fn decide_with(&self, compiled: &Compiled, ask: &Ask) -> Decision {
        let deny = |policies: Vec<String>, errors: Vec<String>| Decision {
            allowed: false,
            policies,
            errors,
            checkpoint: None,
            version: compiled.version,
        };
        let action = ask.target.action();
        let (resource, resource_entity, ancestors) = self.resource(&ask.target);
        let slice = compiled.slice(action, &resource, &ancestors, &ask.subject);
        if slice.is_empty() {
            return deny(Vec::new(), Vec::new());
        }
        let (entities, context) = match self.inputs(compiled, ask, resource_entity, true) {
            Ok(x) => x,
            Err(e) => return deny(Vec::new(), vec![e]),
        };
        let action_uid = facts::uid(&facts::types().action, action);
        let principal = facts::principal_uid(&ask.subject);
        let request = match Request::new(principal, action_uid, resource, context, None) {
            Ok(r) => r,
            Err(e) => return deny(Vec::new(), vec![e.to_string()]),
        };
        let response = self.authorizer.is_authorized(&request, &slice, &entities);
        let mut errors = Vec::new();
        let mut failed_forbids = Vec::new();
        for e in response.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
            let id = pe.policy_id();
            errors.push(format!("{id}: {pe}"));
            if slice
                .policy(id)
                .is_some_and(|p| p.effect() == Effect::Forbid)
            {
                failed_forbids.push(id.to_string());
            }
        }
        let reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        if !failed_forbids.is_empty() {
            return deny(failed_forbids, errors);
        }
        if response.decision() == CedarDecision::Deny {
            return deny(reasons, errors);
        }
        let mut checkpoint = response
            .diagnostics()
            .reason()
            .filter_map(|id| compiled.checkpoints.get(id).copied())
            .max();
        if checkpoint.is_none() && self.rules_demand_checkpoint(&ask.target) {
            checkpoint = Some(Checkpoint::User);
        }
        Decision {
            allowed: true,
            policies: reasons,
            errors,
            checkpoint,
            version: compiled.version,
        }
    }

    fn rules_demand_checkpoint(&self, target: &Target) -> bool {
        let Target::Tool {
            server,
            flags,
            risk_tier,
            ..
        } = *target
        else {
            return false;
        };
        let tier = risk_tier
            .map(i64::from)
            .or_else(|| self.servers.get(server).map(|s| s.1))
            .unwrap_or(facts::DEFAULT_RISK_TIER);
        let by_tier = self
            .rules
            .risk_tier_at_least
            .is_some_and(|t| tier >= i64::from(t));
        by_tier || (self.rules.destructive && flags.destructive)
    }

    pub fn checkpoint_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.rules.timeout_secs)
    }

    /// May the subject see this item in a list? True unless every use is
    /// denied whatever the arguments: policies that test arguments, time or
    /// client stay undecided here, and the item stays listed.
    pub fn visible(&self, compiled: &Compiled, ask: &Ask) -> bool {
        let action = ask.target.action();
        let (resource, resource_entity, ancestors) = self.resource(&ask.target);
        let slice = compiled.slice(action, &resource, &ancestors, &ask.subject);
        if slice.is_empty() {
            return false;
        }
        let Ok((entities, _)) = self.inputs(compiled, ask, resource_entity, false) else {
            return false;
        };
        let request = Request::builder()
            .principal(facts::principal_uid(&ask.subject))
            .action(facts::uid(&facts::types().action, action))
            .resource(resource)
            .build();
        let partial = self
            .authorizer
            .is_authorized_partial(&request, &slice, &entities);
        partial.decision() != Some(CedarDecision::Deny)
    }

    fn resource(&self, target: &Target) -> (EntityUid, Option<Entity>, Vec<EntityUid>) {
        let ty = facts::types();
        let server_tier = target
            .server()
            .and_then(|s| self.servers.get(s))
            .map(|s| s.1);
        let (uid, entity) = facts::resource_entity(target, server_tier);
        let mut ancestors = vec![facts::uid(&ty.vs, target.virtual_server())];
        if let Some(s) = target.server() {
            ancestors.push(facts::uid(&ty.server, s));
        }
        (uid, entity, ancestors)
    }

    fn inputs(
        &self,
        compiled: &Compiled,
        ask: &Ask,
        resource: Option<Entity>,
        with_context: bool,
    ) -> Result<(Entities, Context), String> {
        let mut list: Vec<Entity> = Vec::with_capacity(4);
        list.extend(facts::principal_entity(&ask.subject));
        list.extend(resource);
        if let Some((server, _)) = ask.target.server().and_then(|s| self.servers.get(s)) {
            list.push(server.clone());
        }
        let (client_uid, client) = facts::client_entity(&ask.subject);
        list.extend(client);
        let entities = Entities::from_entities(list, None).map_err(|e| e.to_string())?;
        if !with_context {
            return Ok((entities, Context::empty()));
        }
        let mut pairs = Vec::with_capacity(6);
        if matches!(ask.target, Target::Tool { .. } | Target::Prompt { .. }) {
            pairs.push((
                "args".to_owned(),
                facts::args_record(ask.args, &compiled.used.args),
            ));
            pairs.push((
                "derived".to_owned(),
                facts::derived_record(ask.args, &compiled.used.derived, &self.patterns),
            ));
        }
        pairs.push((
            "client".to_owned(),
            cedar_policy::RestrictedExpression::new_entity_uid(client_uid),
        ));
        pairs.push(("source_ip".to_owned(), facts::ip(ask.subject.source_ip)));
        pairs.push(("time".to_owned(), facts::time_record(ask.now)));
        pairs.push((
            "virtual_server".to_owned(),
            cedar_policy::RestrictedExpression::new_string(ask.target.virtual_server().to_owned()),
        ));
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        Ok((entities, context))
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("version", &self.version)
            .field("policies", &self.info.len())
            .finish()
    }
}

impl Compiled {
    fn empty() -> Compiled {
        Compiled {
            version: 0,
            set: PolicySet::new(),
            used: ArgumentUse::default(),
            info: Vec::new(),
            checkpoints: HashMap::new(),
            by_entity: HashMap::new(),
            general: Vec::new(),
            slices: RwLock::new(HashMap::new()),
        }
    }
}
