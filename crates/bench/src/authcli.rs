//! Accounts and tokens for a gateway under test, made with the `portcullis`
//! CLI against the gateway's own config (another process writing the store, as
//! an operator would).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// The user the harness creates and issues its tokens to.
pub const BENCH_USER: &str = "bench";

/// `portcullis <subcommand> ... --config <config>`.
#[derive(Debug, Clone)]
pub struct Cli {
    pub bin: PathBuf,
    pub config: PathBuf,
}

/// A token issued by `portcullis token create`.
#[derive(Debug, Clone)]
pub struct Issued {
    pub id: String,
    pub secret: String,
}

impl Cli {
    pub fn new(bin: &Path, config: &Path) -> Cli {
        Cli {
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Runs a command to completion; fails on a non-zero exit status.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "`portcullis {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(out)
    }

    /// Whether this binary has the `admin` and `token` commands.
    pub fn has_token_commands(bin: &Path) -> bool {
        let help = |sub: &str| {
            Command::new(bin)
                .args([sub, "--help"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        };
        help("admin") && help("token")
    }

    /// `portcullis admin create --username <user>` with a random password.
    pub fn create_admin(&self, username: &str) -> Result<()> {
        let password = format!("bench-{}-{}", std::process::id(), nanos());
        self.run(
            &["admin", "create", "--username", username],
            &[("PORTCULLIS_ADMIN_PASSWORD", &password)],
        )?;
        Ok(())
    }

    /// `portcullis token create --user <user> --name <name> --scope <scope>`:
    /// the secret is stdout; the id is in the metadata on stderr (`token <id>
    /// "<name>" ...`), else looked up with `token list`.
    pub fn create_token(&self, user: &str, name: &str, scope: &str) -> Result<Issued> {
        let out = self.run(
            &[
                "token", "create", "--user", user, "--name", name, "--scope", scope,
            ],
            &[],
        )?;
        let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if secret.is_empty() || secret.contains(char::is_whitespace) {
            bail!("`portcullis token create` printed {secret:?}, expected the token alone");
        }
        let meta = String::from_utf8_lossy(&out.stderr);
        let id = match id_from_metadata(&meta, name) {
            Some(id) => id,
            None => self.token_id(name)?,
        };
        Ok(Issued { id, secret })
    }

    /// The id of the (unique) token named `name`, from `portcullis token list`.
    pub fn token_id(&self, name: &str) -> Result<String> {
        let out = self.run(&["token", "list"], &[])?;
        let text = String::from_utf8_lossy(&out.stdout);
        find_token_id(&text, name)
            .with_context(|| format!("no token named {name:?} in `portcullis token list`:\n{text}"))
    }

    /// `portcullis token revoke <id>`, timed: (start, end) around the process.
    pub fn revoke_token(&self, id: &str) -> Result<(Instant, Instant)> {
        let mut cmd = self.command(&["token", "revoke", id]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let start = Instant::now();
        let out = cmd.output().context("running portcullis token revoke")?;
        let end = Instant::now();
        if !out.status.success() {
            bail!(
                "`portcullis token revoke {id}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((start, end))
    }
}

/// Finds the id on the line of `token list` output that names `name`: the
/// line's first field when it has several, else a JSON array of objects.
fn find_token_id(text: &str, name: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let rows = v.as_array().cloned().or_else(|| {
            v.get("tokens")
                .and_then(serde_json::Value::as_array)
                .cloned()
        })?;
        return rows
            .iter()
            .find(|r| r.get("name").and_then(serde_json::Value::as_str) == Some(name))
            .and_then(|r| r.get("id").and_then(serde_json::Value::as_str))
            .map(String::from);
    }
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 1 && f[1..].contains(&name))
        .map(|f| f[0].to_string())
}

/// The id in `token <id> "<name>" for ...` (what `token create` prints on stderr).
fn id_from_metadata(text: &str, name: &str) -> Option<String> {
    let quoted = format!("\"{name}\"");
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some("token")).then_some(())?;
        let id = f.next()?;
        let ok = f.next() == Some(quoted.as_str())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        ok.then(|| id.to_string())
    })
}

fn nanos() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Fails with a hint when the binary predates the `admin` / `token` commands.
pub fn require_token_commands(bin: &Path) -> Result<()> {
    if Cli::has_token_commands(bin) {
        return Ok(());
    }
    bail!(
        "{} has no `admin` / `token` commands: rebuild it (`cargo build --release -p portcullis-cli`)",
        bin.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_in_tables_and_json() {
        let table = "ID                                NAME     USER   SCOPES\n\
                     0193a-aaaa  bench-1  bench  vs:bench\n\
                     0193a-bbbb  revoke-2  bench  vs:bench\n";
        assert_eq!(
            find_token_id(table, "revoke-2").as_deref(),
            Some("0193a-bbbb")
        );
        assert_eq!(find_token_id(table, "revoke").as_deref(), None);
        let meta = "token 5d87ab50c1d3 \"t1\" for \"bench\", scopes vs:bench (shown once)\n";
        assert_eq!(
            id_from_metadata(meta, "t1").as_deref(),
            Some("5d87ab50c1d3")
        );
        assert_eq!(id_from_metadata(meta, "t2"), None);
        let json = r#"[{"id":"x1","name":"a"},{"id":"x2","name":"b"}]"#;
        assert_eq!(find_token_id(json, "b").as_deref(), Some("x2"));
    }
}
