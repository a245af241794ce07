//! Cross-field validation: references, names and load-time collisions.

use crate::model::{Config, Transport};
use portcullis_protocol::names;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Syntax(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

fn valid_ident(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    if config.limits.max_body_bytes < 1024 {
        return Err(invalid(
            "limits.max_body_bytes must be at least 1024".into(),
        ));
    }
    validate_auth(&config.auth)?;
    validate_policy(&config.policy)?;
    crate::telemetry::validate(&config.telemetry)?;
    let mut upstreams = BTreeSet::new();
    for up in &config.upstreams {
        let at = format!("upstream {:?}", up.name);
        if !valid_ident(&up.name) {
            return Err(invalid(format!(
                "{at}: names use letters, digits, '_' and '-' (at most 64)"
            )));
        }
        if !upstreams.insert(up.name.as_str()) {
            return Err(invalid(format!("{at} is defined twice")));
        }
        match up.transport {
            Transport::StreamableHttp | Transport::Sse => {
                let url = up.url.as_deref().ok_or_else(|| {
                    invalid(format!("{at}: `url` is required for this transport"))
                })?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(format!("{at}: `url` must be http:// or https://")));
                }
                if up.command.is_some() {
                    return Err(invalid(format!("{at}: `command` is only for stdio")));
                }
            }
            Transport::Stdio => {
                if up.command.as_deref().unwrap_or("").is_empty() {
                    return Err(invalid(format!("{at}: `command` is required for stdio")));
                }
                if up.url.is_some() {
                    return Err(invalid(format!("{at}: `url` is not used by stdio")));
                }
                if up.max_processes == 0 {
                    return Err(invalid(format!("{at}: `max_processes` must be at least 1")));
                }
            }
        }
        if let Some(t) = up.catalog.risk_tier {
            if !(1..=4).contains(&t) {
                return Err(invalid(format!("{at}: catalog.risk_tier must be 1 to 4")));
            }
        }
    }
    let mut servers = BTreeSet::new();
    for vs in &config.virtual_servers {
        let at = format!("virtual server {:?}", vs.name);
        if !valid_ident(&vs.name) {
            return Err(invalid(format!(
                "{at}: names use letters, digits, '_' and '-' (at most 64)"
            )));
        }
        if !servers.insert(vs.name.as_str()) {
            return Err(invalid(format!("{at} is defined twice")));
        }
        if vs.upstreams.is_empty() {
            return Err(invalid(format!("{at} has no upstreams")));
        }
        if !vs
            .separator
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(format!(
                "{at}: the separator may only use letters, digits, '_' and '-'"
            )));
        }
        validate_members(config, vs, &at)?;
    }
    Ok(())
}

fn validate_members(
    config: &Config,
    vs: &crate::VirtualServer,
    at: &str,
) -> Result<(), ConfigError> {
    let mut members = BTreeSet::new();
    let mut prefixes: BTreeMap<String, &str> = BTreeMap::new();
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    for m in &vs.upstreams {
        if !config.upstreams.iter().any(|u| u.name == m.upstream) {
            return Err(invalid(format!("{at}: unknown upstream {:?}", m.upstream)));
        }
        if !members.insert(m.upstream.as_str()) {
            return Err(invalid(format!(
                "{at}: upstream {:?} listed twice",
                m.upstream
            )));
        }
        let prefix = m.effective_prefix();
        if !names::is_valid_prefix(&prefix) {
            return Err(invalid(format!(
                "{at}: prefix {prefix:?} must start with a letter and use letters, digits and '-' (at most 32)"
            )));
        }
        if !prefix.is_empty() {
            if let Some(other) = prefixes.insert(prefix.clone(), &m.upstream) {
                return Err(invalid(format!(
                    "{at}: upstreams {other:?} and {:?} both use prefix {prefix:?}, so their names would collide",
                    m.upstream
                )));
            }
        }
        for (tool, o) in &m.tools {
            if o.hide && (o.rename.is_some() || !o.fixed_arguments.is_empty()) {
                return Err(invalid(format!(
                    "{at}: tool {tool:?} of {:?} is hidden and also renamed or given fixed arguments",
                    m.upstream
                )));
            }
            let exposed = match &o.rename {
                Some(r) => {
                    if !names::is_client_safe(r) {
                        return Err(invalid(format!(
                            "{at}: rename {r:?} must match ^[a-zA-Z0-9_-]{{1,64}}$"
                        )));
                    }
                    r.clone()
                }
                None => names::expose(&prefix, &vs.separator, tool),
            };
            if o.hide {
                continue;
            }
            let owner = format!("{}/{tool}", m.upstream);
            if let Some(prev) = renamed.insert(exposed.clone(), owner.clone()) {
                return Err(invalid(format!(
                    "{at}: tools {prev:?} and {owner:?} are both exposed as {exposed:?}"
                )));
            }
        }
    }
    // A rename may also land on the default name of another upstream's prefix space.
    for (exposed, owner) in &renamed {
        for (prefix, up) in &prefixes {
            let claimed = format!("{prefix}{}", vs.separator);
            if exposed.starts_with(&claimed) && !owner.starts_with(&format!("{up}/")) {
                return Err(invalid(format!(
                    "{at}: {owner:?} is renamed to {exposed:?}, inside the name space of upstream {up:?} (prefix {prefix:?})"
                )));
            }
        }
    }
    Ok(())
}

fn validate_auth(auth: &crate::Auth) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for idp in &auth.idps {
        let at = format!("auth.idps {:?}", idp.name);
        if !valid_ident(&idp.name) || idp.name == "local" {
            return Err(invalid(format!(
                "{at}: names use letters, digits, '_' and '-' and \"local\" is reserved"
            )));
        }
        if !names.insert(idp.name.as_str()) {
            return Err(invalid(format!("{at} is defined twice")));
        }
        if !(idp.issuer.starts_with("https://") || idp.issuer.starts_with("http://")) {
            return Err(invalid(format!("{at}: `issuer` must be an http(s) URL")));
        }
        if !idp.scopes.iter().any(|s| s == "openid") {
            return Err(invalid(format!("{at}: `scopes` must include \"openid\"")));
        }
    }
    if let Some(issuer) = &auth.issuer {
        if !(issuer.starts_with("https://") || issuer.starts_with("http://"))
            || issuer.ends_with('/')
        {
            return Err(invalid(
                "auth.issuer must be an http(s) URL without a trailing slash".into(),
            ));
        }
    }
    if auth.access_token_ttl_secs == 0 || auth.access_token_ttl_secs > 86_400 {
        return Err(invalid(
            "auth.access_token_ttl_secs must be between 1 and 86400".into(),
        ));
    }
    Ok(())
}

fn validate_policy(policy: &crate::Policy) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for limit in &policy.rate_limits {
        let at = format!("policy.rate_limits {:?}", limit.name);
        if !names.insert(limit.name.as_str()) {
            return Err(invalid(format!("{at} is defined twice")));
        }
        if limit.requests_per_minute.is_none() && limit.daily_quota.is_none() {
            return Err(invalid(format!(
                "{at}: set requests_per_minute, daily_quota or both"
            )));
        }
        if limit.requests_per_minute == Some(0) || limit.burst == Some(0) {
            return Err(invalid(format!(
                "{at}: use daily_quota: 0 to forbid calls; rates must be positive"
            )));
        }
    }
    if let Some(t) = policy.checkpoint.risk_tier_at_least {
        if !(1..=4).contains(&t) {
            return Err(invalid(
                "policy.checkpoint.risk_tier_at_least must be 1..4".into(),
            ));
        }
    }
    if policy.reload_interval_ms < 100 {
        return Err(invalid(
            "policy.reload_interval_ms must be at least 100".into(),
        ));
    }
    Ok(())
}
