//! `portcullis demo`: a working gateway in one command, over real MCP servers from
//! the npm registry (the reference "everything" and "filesystem" servers).

use crate::serve;
use anyhow::Context;
use portcullis_config::Config;
use std::path::{Path, PathBuf};

const EVERYTHING: &str = "@modelcontextprotocol/server-everything@2026.8.31";
const FILESYSTEM: &str = "@modelcontextprotocol/server-filesystem@2026.8.31";

/// Entry points of the sample servers inside `<data_dir>/npm`.
fn entry(data_dir: &Path, package: &str) -> PathBuf {
    data_dir
        .join("npm/node_modules/@modelcontextprotocol")
        .join(package)
        .join("dist/index.js")
}

/// Install the sample servers once into the data directory (npm, no install
/// scripts). Running them from there avoids npx, whose on-the-fly installs can
/// stall, and starts them in well under a second.
async fn ensure_servers(data_dir: &Path) -> anyhow::Result<()> {
    let wanted = ["server-everything", "server-filesystem"];
    if wanted.iter().all(|p| entry(data_dir, p).is_file()) {
        return Ok(());
    }
    eprintln!(
        "Installing the sample MCP servers from npm into {} (first run only)...",
        data_dir.join("npm").display()
    );
    let status = tokio::process::Command::new("npm")
        .args([
            "install",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefix",
        ])
        .arg(data_dir.join("npm"))
        .args([EVERYTHING, FILESYSTEM])
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running npm (install Node.js and npm: apt-get install nodejs npm)")?;
    if !status.success() {
        anyhow::bail!("npm install of the sample servers failed ({status})");
    }
    Ok(())
}

pub fn demo_config(listen: &str, data_dir: &std::path::Path) -> anyhow::Result<Config> {
    let files = data_dir.join("files");
    std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    let readme = files.join("welcome.txt");
    if !readme.exists() {
        std::fs::write(
            &readme,
            "Hello from the Portcullis demo. This file is served by the filesystem upstream.\n",
        )?;
    }
    let files = std::fs::canonicalize(&files)?;
    let policies = demo_policies(data_dir, &files)?;
    let yaml = format!(
        r#"
listen: {listen}
data_dir: {data_dir}
upstreams:
  - name: everything
    transport: stdio
    command: node
    args: [{everything}, "stdio"]
    max_processes: 8
    catalog:
      owner: demo@portcullis.dev
      team: platform
      description: The MCP reference server that exercises every protocol feature
      risk_tier: 1
      tags: [demo, reference]
  - name: files
    transport: stdio
    command: node
    args: [{filesystem}, {files}]
    max_processes: 8
    catalog:
      owner: demo@portcullis.dev
      team: platform
      description: Read and write files in the demo directory
      risk_tier: 2
      data_domains: [files]
policy:
  dir: {policies}
virtual_servers:
  - name: demo
    description: Portcullis demo - tools from the everything server (ev_*) and a sandboxed filesystem (files_*).
    upstreams:
      - upstream: everything
        prefix: ev
      - upstream: files
        tools:
          move_file: {{hide: true}}
"#,
        listen = serde_json::to_string(listen)?,
        data_dir = serde_json::to_string(&data_dir.display().to_string())?,
        files = serde_json::to_string(&files.display().to_string())?,
        policies = serde_json::to_string(&policies.display().to_string())?,
        everything =
            serde_json::to_string(&entry(data_dir, "server-everything").display().to_string())?,
        filesystem =
            serde_json::to_string(&entry(data_dir, "server-filesystem").display().to_string())?,
    );
    Ok(Config::from_yaml(&yaml, "demo")?)
}

/// The demo's policy directory, with a starting policy the user can edit
/// (the gateway reloads it on save).
fn demo_policies(data_dir: &Path, files: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("policies");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("demo.cedar");
    if !file.exists() {
        let inside = serde_json::to_string(&format!("{}/*", files.display()))?;
        std::fs::write(
            &file,
            format!(
                r#"// Demo policies: edit and save, the gateway reloads them. See docs/policy.md.

// Everyone who may use the demo virtual server may use all of it...
@id("demo-everyone")
permit(principal, action, resource in VirtualServer::"demo");

// ...except that file tools never touch paths outside the demo directory
// (`derived.path` is the argument with `.` and `..` resolved).
@id("files-stay-in-the-demo-directory")
forbid(principal, action == Action::"call_tool", resource in Server::"files")
when {{ context.args has path && !(context.derived.path.path like {inside}) }};
"#
            ),
        )?;
    }
    Ok(dir)
}

pub async fn run(listen: String, data_dir: PathBuf) -> anyhow::Result<()> {
    if which("node").is_none() || which("npm").is_none() {
        anyhow::bail!(
            "the demo runs the MCP reference servers on Node.js: apt-get install nodejs npm"
        );
    }
    std::fs::create_dir_all(&data_dir)?;
    let data_dir = std::fs::canonicalize(&data_dir)?;
    ensure_servers(&data_dir).await?;
    let config = demo_config(&listen, &data_dir)?;
    let login = demo_login(&data_dir, &config).await?;
    serve::run(
        config,
        "demo",
        Some(Box::new(move |addr| {
            let url = format!("http://{addr}/mcp/demo");
            println!();
            println!("Portcullis demo is running.");
            println!("  MCP endpoint (Streamable HTTP): {url}");
            println!("  Legacy SSE endpoint:            http://{addr}/mcp/demo/sse");
            println!();
            println!("Paste into an MCP client configuration (Claude Desktop, Cursor, VS Code):");
            println!("  {{\"mcpServers\": {{\"portcullis-demo\": {{\"type\": \"http\", \"url\": \"{url}\"}}}}}}");
            println!("or: claude mcp add --transport http portcullis-demo {url}");
            println!("(clients sign in with OAuth: approve, then log in as the admin below)");
            println!();
            println!("Admin login:    http://{addr}/login");
            println!("  username:     {}", login.username);
            println!("  password:     {}", login.password);
            println!("Personal access token for the demo virtual server (shown once):");
            println!("  {}", login.token);
            println!("  curl -H 'Authorization: Bearer {}' ...", login.token);
            println!();
        })),
    )
    .await
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

struct DemoLogin {
    username: String,
    password: String,
    token: String,
}

/// The demo's local admin gets a fresh password and a fresh personal access
/// token for `demo` on every start; older demo tokens are revoked.
async fn demo_login(data_dir: &std::path::Path, config: &Config) -> anyhow::Result<DemoLogin> {
    use portcullis_identity::{accounts, secrets};
    let store = portcullis_store::Store::open(data_dir).await?;
    let password = secrets::random_token("")[..20].to_owned();
    let admin = accounts::upsert_local_user(&store, "admin", &password, true).await?;
    for t in store.api_tokens(Some(&admin.id)).await? {
        if t.name == "demo" && t.revoked_at.is_none() {
            store.revoke_api_token(&t.id).await?;
        }
    }
    let scopes = vec!["vs:demo".to_owned(), "admin".to_owned()];
    let (_, token) = accounts::create_api_token(
        &store,
        &admin,
        "demo",
        &scopes,
        Some(30),
        config.auth.max_api_token_ttl_days,
    )
    .await?;
    store.close().await;
    Ok(DemoLogin {
        username: admin.username,
        password,
        token,
    })
}
