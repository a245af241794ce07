//! `portcullis policy`: check, test, list and manage Cedar policies from the
//! command line, without a running gateway. Commands load exactly what the
//! gateway would: the `*.cedar` files of `policy.dir` (or `--policies DIR`)
//! and the documents stored through the admin API in `data_dir`, or the
//! built-in allow-all when there is neither. `check` and `test` exit 1 on
//! invalid policies or failing cases, so CI can gate policy changes on them.

use crate::accounts::CliAudit;
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use portcullis_config::Config;
use portcullis_policy::{
    read_dir, Case, CasePrincipal, Compiled, Expect, PolicyEngine, PolicyError, PolicySource,
    SourceError, Suite, SuiteReport, STORED_PREFIX,
};
use portcullis_store::Store;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PolicyArgs {
    /// Configuration file (its `policy` section and `data_dir`).
    #[arg(long, short, global = true, default_value = "portcullis.yaml")]
    config: PathBuf,
    /// Directory of *.cedar files to use instead of the configuration's policy.dir.
    #[arg(long, global = true)]
    policies: Option<PathBuf>,
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate the policy set; print each error as origin:line:column and exit 1 on any.
    Check,
    /// Run a test suite (--suite FILE), or decide one described request.
    Test(Box<TestArgs>),
    /// List the loaded policies: id, effect, origin:line, checkpoint.
    List,
    /// Store a policy document (as the admin API does), after validating the resulting set.
    Put {
        /// Document name: 1 to 64 letters, digits, '_', '.' or '-'.
        name: String,
        /// Cedar file to store.
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a stored policy document, after validating what remains.
    Delete { name: String },
}

#[derive(Args)]
struct TestArgs {
    /// YAML suite of cases with expected decisions (docs/policy.md).
    #[arg(long, conflicts_with_all = ["user", "tool", "prompt", "resource"])]
    suite: Option<PathBuf>,
    /// Username of the caller.
    #[arg(long)]
    user: Option<String>,
    /// A group the caller belongs to; repeat for several.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// The caller is a service account.
    #[arg(long)]
    service: bool,
    /// The caller is an administrator.
    #[arg(long)]
    admin: bool,
    #[arg(long)]
    email: Option<String>,
    /// OAuth client id (default: api-token).
    #[arg(long)]
    client: Option<String>,
    /// Virtual server.
    #[arg(long = "vs")]
    virtual_server: Option<String>,
    /// Exposed tool name.
    #[arg(long, conflicts_with_all = ["prompt", "resource"])]
    tool: Option<String>,
    #[arg(long, conflicts_with = "resource")]
    prompt: Option<String>,
    /// Resource URI.
    #[arg(long)]
    resource: Option<String>,
    /// Upstream the item comes from (inferred from the configuration's prefixes when omitted).
    #[arg(long)]
    server: Option<String>,
    /// Arguments as a JSON object.
    #[arg(long)]
    args: Option<String>,
    /// MCP tool annotations as a JSON object, e.g. '{"readOnlyHint": true}'.
    #[arg(long)]
    annotations: Option<String>,
    #[arg(long)]
    risk_tier: Option<u8>,
    #[arg(long)]
    source_ip: Option<IpAddr>,
    /// RFC 3339 time of the call (default: now).
    #[arg(long)]
    time: Option<String>,
    /// Exit 1 unless the decision is this.
    #[arg(long, value_enum)]
    expect: Option<Expected>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Expected {
    Allow,
    Deny,
}

/// The configuration, an engine for it, and where policies come from.
struct Loaded {
    config: Config,
    engine: PolicyEngine,
    dir: Option<PathBuf>,
}

impl Loaded {
    fn open(a: &PolicyArgs) -> anyhow::Result<Loaded> {
        let mut config = Config::load(&a.config)?;
        if let Some(dir) = &a.policies {
            config.policy.dir = Some(dir.clone());
        }
        let engine = PolicyEngine::new(&config).map_err(|e| anyhow!("{e}"))?;
        let dir = config.policy.dir.clone();
        Ok(Loaded {
            config,
            engine,
            dir,
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.config
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".portcullis"))
    }

    /// The store, or `None` when `data_dir` holds none yet: reading
    /// commands must not create one (a CI checkout has no gateway state).
    async fn existing_store(&self) -> anyhow::Result<Option<Store>> {
        let dir = self.data_dir();
        if !dir.join("portcullis.db").exists() {
            return Ok(None);
        }
        Ok(Some(self.store_at(&dir).await?))
    }

    async fn store_at(&self, dir: &Path) -> anyhow::Result<Store> {
        Store::open(dir)
            .await
            .with_context(|| format!("opening the state store in {}", dir.display()))
    }

    /// What the gateway loads, with the stored document `replace` changed
    /// to `text` (or removed with `None`).
    async fn sources(
        &self,
        store: Option<&Store>,
        replace: Option<(&str, Option<&str>)>,
    ) -> anyhow::Result<Vec<PolicySource>> {
        let mut out = match &self.dir {
            Some(dir) => {
                read_dir(dir).with_context(|| format!("reading policies in {}", dir.display()))?
            }
            None => Vec::new(),
        };
        let stored = match store {
            Some(s) => s.list_policies().await?,
            None => Vec::new(),
        };
        for doc in stored {
            if replace.is_some_and(|(name, _)| name == doc.name) {
                continue;
            }
            out.push(PolicySource {
                origin: format!("{STORED_PREFIX}{}", doc.name),
                text: doc.text,
            });
        }
        if let Some((name, Some(text))) = replace {
            out.push(PolicySource {
                origin: format!("{STORED_PREFIX}{name}"),
                text: text.to_owned(),
            });
        }
        if self.dir.is_none() && out.is_empty() {
            out.push(PolicySource {
                origin: "builtin".into(),
                text: portcullis_policy::BUILTIN_ALLOW_ALL.into(),
            });
        }
        Ok(out)
    }

    /// Compile, or print every located error and fail.
    fn compile(&self, sources: &[PolicySource]) -> anyhow::Result<Compiled> {
        match self.engine.compile(sources, 1) {
            Ok(c) => Ok(c),
            Err(PolicyError::Invalid(errors)) => {
                for e in &errors {
                    eprintln!("{}", self.locate(e));
                }
                bail!(
                    "the policy set is invalid ({})",
                    count(errors.len(), "error", "errors")
                )
            }
            Err(e) => Err(anyhow!("{e}")),
        }
    }

    /// An error with a file origin as a path an editor can open.
    fn locate(&self, e: &SourceError) -> String {
        let is_file = !e.origin.is_empty()
            && !e.origin.starts_with(STORED_PREFIX)
            && !matches!(e.origin.as_str(), "builtin" | "schema");
        match &self.dir {
            Some(dir) if is_file => format!(
                "{}:{}:{}: {}",
                dir.join(&e.origin).display(),
                e.line,
                e.column,
                e.message
            ),
            _ => e.to_string(),
        }
    }

    fn warnings(sources: &[PolicySource], compiled: &Compiled) {
        if sources.iter().any(|s| s.origin == "builtin") {
            eprintln!("warning: no policy.dir and no stored policies: the built-in policy permits every authenticated caller");
        } else if compiled.policies().is_empty() {
            eprintln!("warning: the policy set is empty: every call is denied");
        }
    }
}

pub async fn run(a: PolicyArgs) -> anyhow::Result<()> {
    let loaded = Loaded::open(&a)?;
    match &a.cmd {
        PolicyCmd::Check => check(&loaded).await,
        PolicyCmd::Test(t) => test(&loaded, t).await,
        PolicyCmd::List => list(&loaded).await,
        PolicyCmd::Put { name, file } => put(&loaded, name, file).await,
        PolicyCmd::Delete { name } => delete(&loaded, name).await,
    }
}

async fn installed(loaded: &Loaded) -> anyhow::Result<(Vec<PolicySource>, Compiled)> {
    let store = loaded.existing_store().await?;
    let sources = loaded.sources(store.as_ref(), None).await?;
    if let Some(s) = store {
        s.close().await;
    }
    let compiled = loaded.compile(&sources)?;
    Ok((sources, compiled))
}

async fn check(loaded: &Loaded) -> anyhow::Result<()> {
    let (sources, compiled) = installed(loaded).await?;
    Loaded::warnings(&sources, &compiled);
    println!(
        "ok: {} from {}",
        count(compiled.policies().len(), "policy", "policies"),
        count(sources.len(), "source", "sources")
    );
    Ok(())
}

async fn list(loaded: &Loaded) -> anyhow::Result<()> {
    let (sources, compiled) = installed(loaded).await?;
    Loaded::warnings(&sources, &compiled);
    println!(
        "{:<40} {:<7} {:<32} CHECKPOINT",
        "ID", "EFFECT", "ORIGIN:LINE"
    );
    for p in compiled.policies() {
        println!(
            "{:<40} {:<7} {:<32} {}",
            p.id,
            p.effect,
            format!("{}:{}", p.origin, p.line),
            p.checkpoint.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

async fn test(loaded: &Loaded, t: &TestArgs) -> anyhow::Result<()> {
    let (_, compiled) = installed(loaded).await?;
    let now = portcullis_identity::now();
    if let Some(path) = &t.suite {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut suite = Suite::from_yaml(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        suite
            .resolve(&loaded.config)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let report = suite
            .run(&loaded.engine, &compiled, now)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if t.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
        if !report.ok() {
            bail!("{} of {} cases failed", report.failed, report.cases.len());
        }
        return Ok(());
    }
    let mut suite = Suite {
        cases: vec![case_from_flags(t)?],
    };
    suite.resolve(&loaded.config)?;
    let report = suite.run(&loaded.engine, &compiled, now)?;
    let r = report.cases.first().ok_or_else(|| anyhow!("no result"))?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        let none = || "none".to_owned();
        println!("decision:   {}", if r.allowed { "allow" } else { "deny" });
        println!(
            "policies:   {}",
            if r.policies.is_empty() {
                none()
            } else {
                r.policies.join(", ")
            }
        );
        println!(
            "checkpoint: {}",
            r.checkpoint
                .map(|c| format!("{c:?}").to_lowercase())
                .unwrap_or_else(none)
        );
        println!("listed:     {}", if r.listed { "yes" } else { "no" });
        println!(
            "errors:     {}",
            if r.errors.is_empty() {
                none()
            } else {
                r.errors.join("; ")
            }
        );
        println!("reason:     {}", r.reason);
    }
    if let Some(want) = t.expect {
        let want = matches!(want, Expected::Allow);
        if want != r.allowed {
            bail!("expected {}", if want { "allow" } else { "deny" });
        }
    }
    Ok(())
}

fn print_report(report: &SuiteReport) {
    let width = report
        .cases
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    for c in &report.cases {
        let verdict = if c.passed { "PASS" } else { "FAIL" };
        let decision = if c.allowed { "allow" } else { "deny" };
        let mut line = format!(
            "{verdict}  {:<width$}  {decision:<5}  [{}]",
            c.name,
            c.policies.join(", ")
        );
        if let Some(k) = c.checkpoint {
            line.push_str(&format!("  checkpoint: {k:?}").to_lowercase());
        }
        if !c.passed {
            line.push_str(&format!("  -- {}", c.failures.join("; ")));
        }
        println!("{line}");
        for e in &c.errors {
            println!("      error: {e}");
        }
    }
    println!("{} passed, {} failed", report.passed, report.failed);
}

fn json_object(flag: &str, text: &Option<String>) -> anyhow::Result<Option<Map<String, Value>>> {
    let Some(text) = text else { return Ok(None) };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => bail!("{flag} must be a JSON object"),
        Err(e) => bail!("{flag} is not JSON: {e}"),
    }
}

fn case_from_flags(t: &TestArgs) -> anyhow::Result<Case> {
    let user = t.user.clone().ok_or_else(|| {
        anyhow!("give --suite FILE, or --user, --vs and --tool (or --prompt, --resource)")
    })?;
    let virtual_server = t
        .virtual_server
        .clone()
        .ok_or_else(|| anyhow!("--vs is required"))?;
    Ok(Case {
        name: "request".into(),
        principal: CasePrincipal {
            user,
            id: None,
            groups: t.groups.clone(),
            service: t.service,
            admin: t.admin,
            email: t.email.clone(),
            owner: None,
            client: t.client.clone(),
        },
        virtual_server,
        tool: t.tool.clone(),
        prompt: t.prompt.clone(),
        resource: t.resource.clone(),
        server: t.server.clone(),
        upstream_name: None,
        annotations: json_object("--annotations", &t.annotations)?,
        risk_tier: t.risk_tier,
        args: json_object("--args", &t.args)?,
        source_ip: t.source_ip,
        time: t.time.clone(),
        expect: t.expect.map(|e| match e {
            Expected::Allow => Expect::Allow,
            Expected::Deny => Expect::Deny,
        }),
        policies: None,
        checkpoint: None,
        listed: None,
    })
}

/// The admin API's rule, so a document stored here can be managed there.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.bytes().all(|b| b == b'.');
    if !ok {
        bail!("policy name {name:?}: use 1 to 64 letters, digits, '_', '.' or '-'");
    }
    Ok(())
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn operator() -> String {
    let who = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{who}")
}

async fn put(loaded: &Loaded, name: &str, file: &Path) -> anyhow::Result<()> {
    check_name(name)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if text.trim().is_empty() {
        bail!(
            "{} is empty; use `policy delete {name}` to remove a document",
            file.display()
        );
    }
    let store = loaded.store_at(&loaded.data_dir()).await?;
    let sources = loaded
        .sources(Some(&store), Some((name, Some(&text))))
        .await?;
    let compiled = loaded.compile(&sources)?;
    let mut audit = CliAudit::open(&loaded.config).await?;
    let revision = store.put_policy(name, &text, &operator()).await?;
    store.close().await;
    let detail = json!({"operation": "put", "name": name, "origin": format!("{STORED_PREFIX}{name}"),
                        "revision": revision, "sha256": portcullis_admin::sha256_hex(&text), "bytes": text.len(),
                        "policies": compiled.policies().len()});
    audit.record("policy.changed", detail).await;
    audit.close().await?;
    println!(
        "stored {STORED_PREFIX}{name} ({} in the set, revision {revision}); running gateways apply it within policy.reload_interval_ms",
        count(compiled.policies().len(), "policy", "policies")
    );
    Ok(())
}

async fn delete(loaded: &Loaded, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let store = loaded.store_at(&loaded.data_dir()).await?;
    if !store.list_policies().await?.iter().any(|d| d.name == name) {
        bail!("no stored policy document {name:?}");
    }
    let sources = loaded.sources(Some(&store), Some((name, None))).await?;
    let compiled = loaded.compile(&sources)?;
    Loaded::warnings(&sources, &compiled);
    let mut audit = CliAudit::open(&loaded.config).await?;
    let revision = store
        .delete_policy(name)
        .await?
        .ok_or_else(|| anyhow!("no stored policy document {name:?}"))?;
    store.close().await;
    let detail = json!({"operation": "delete", "name": name,
                        "origin": format!("{STORED_PREFIX}{name}"), "revision": revision,
                        "policies": compiled.policies().len()});
    audit.record("policy.changed", detail).await;
    audit.close().await?;
    println!("deleted {STORED_PREFIX}{name} (revision {revision})");
    Ok(())
}
