//! `portcullis proxy`: one upstream, no config file, unprefixed at `/mcp`.

use crate::serve;
use clap::Args;
use portcullis_config::Config;

#[derive(Args)]
pub struct ProxyArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The upstream speaks the deprecated HTTP+SSE transport.
    #[arg(long)]
    sse: bool,
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Upstream URL, or after `--`, a command and its arguments (stdio).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    target: Vec<String>,
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let first = args.target[0].clone();
    let is_url = first.starts_with("http://") || first.starts_with("https://");
    let upstream_yaml = if is_url {
        if args.target.len() > 1 {
            anyhow::bail!("a URL upstream takes no further arguments");
        }
        let transport = if args.sse { "sse" } else { "streamable_http" };
        format!(
            "{{name: upstream, transport: {transport}, url: {}}}",
            serde_json::to_string(&first)?
        )
    } else {
        if args.sse {
            anyhow::bail!("--sse needs an upstream URL");
        }
        format!(
            "{{name: upstream, transport: stdio, command: {}, args: {}}}",
            serde_json::to_string(&first)?,
            serde_json::to_string(&args.target[1..])?
        )
    };
    // Build through the YAML path so the proxy gets exactly the same validation.
    let yaml = format!(
        "listen: {listen}\nauth: {{mode: off}}\nupstreams: [{upstream_yaml}]\nvirtual_servers: [{{name: proxy, upstreams: [{{upstream: upstream, prefix: \"\"}}]}}]\n",
        listen = serde_json::to_string(&args.listen)?,
    );
    let mut config = Config::from_yaml(&yaml, "proxy")?;
    config.data_dir = Some(args.data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("portcullis-proxy-{}", std::process::id()))
    }));
    serve::run(
        config,
        "proxy",
        Some(Box::new(|addr| {
            println!("Proxying at http://{addr}/mcp");
        })),
    )
    .await
}
