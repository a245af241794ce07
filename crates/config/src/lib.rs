//! The declarative configuration of a Portcullis gateway (`portcullis.yaml`).
//!
//! This crate parses and validates the YAML: unknown keys are errors naming the line
//! and key, references and exposed names are checked before anything starts. It does
//! not start anything and does not persist anything (that is `portcullis-store`).
//! `calendar` is the UTC date arithmetic the crates above share.

mod audit;
mod auth;
pub mod calendar;
mod model;
mod policy;
mod telemetry;
mod validate;

pub use audit::*;
pub use auth::*;
pub use model::*;
pub use policy::*;
pub use telemetry::*;
pub use validate::ConfigError;

use std::path::Path;

impl Config {
    /// Parse and validate YAML text; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = serde_yaml::from_str(text).map_err(|e| {
            let location = e
                .location()
                .map(|l| format!("{origin}:{}:{}", l.line(), l.column()))
                .unwrap_or_else(|| origin.to_owned());
            ConfigError::Syntax(format!("{location}: {e}"))
        })?;
        config.expand_env()?;
        validate::validate(&config)?;
        Ok(config)
    }

    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Io(format!("{}: {e}", path.display())))?;
        let mut config = Config::from_yaml(&text, &path.display().to_string())?;
        if let (Some(dir), Some(base)) = (&config.policy.dir, path.parent()) {
            if dir.is_relative() {
                config.policy.dir = Some(base.join(dir));
            }
        }
        Ok(config)
    }

    /// Replace `${VAR}` in header and environment values so secrets stay out of the
    /// YAML file itself.
    fn expand_env(&mut self) -> Result<(), ConfigError> {
        for up in &mut self.upstreams {
            for value in up.headers.values_mut().chain(up.env.values_mut()) {
                *value = expand(value)?;
            }
        }
        for idp in &mut self.auth.idps {
            if let Some(secret) = &mut idp.client_secret {
                *secret = expand(secret)?;
            }
        }
        for sink in &mut self.audit.sinks {
            match &mut sink.kind {
                SinkKind::SplunkHec { token, .. } => *token = expand(token)?,
                SinkKind::Otlp { headers, .. } => {
                    for value in headers.values_mut() {
                        *value = expand(value)?;
                    }
                }
                SinkKind::File { .. } | SinkKind::Syslog { .. } => {}
            }
        }
        self.telemetry.expand_env(expand)?;
        Ok(())
    }
}

fn expand(value: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::Invalid(format!("unterminated ${{ in {value:?}")))?;
        let name = &after[..end];
        let v = std::env::var(name)
            .map_err(|_| ConfigError::Invalid(format!("environment variable {name} is not set")))?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
