//! The `kubegate` command: serve, check a configuration, run the zero-setup dev mode,
//! review policies, and sign in (the kubectl credential plugin and its companions).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
#[cfg(feature = "dev")]
use kubegate::dev::{self, DevOptions};
use kubegate::ops::logwriter::{LingeringStderr, LogFlusher};
use kubegate::{app, login};
use kubegate_policy::{Policy, RequestAttributes, Subject, normalize_path, resolve};

#[derive(Parser)]
#[command(
    name = "kubegate",
    version,
    about = "A secure gateway in front of the Kubernetes API server"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and the policy, certificates and keys it names.
    CheckConfig {
        /// The configuration file.
        config: PathBuf,
    },
    /// Print the minimal ClusterRole (YAML) the configuration's impersonation needs.
    Rbac {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The ClusterRole's name.
        #[arg(long, default_value = kubegate::ops::rbac::DEFAULT_ROLE_NAME)]
        name: String,
    },
    /// Run a working gateway with generated certificates, users and tokens.
    #[cfg(feature = "dev")]
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Use the built-in sandbox even if the current kubeconfig's cluster answers.
        #[arg(long)]
        sandbox: bool,
        /// Write the generated files here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// How long the dev issuer's ID tokens live (short, so the plugin's refresh shows).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        id_token_lifetime: std::time::Duration,
    },
    /// Review and test policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Review authentication.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// kubectl credential plugin: print an ExecCredential with a fresh ID token (cached,
    /// refreshed, or from a new sign-in at the OpenID provider).
    GetToken(login::args::GetTokenArgs),
    /// Sign in now and, with --server, write the kubeconfig entry that uses the plugin.
    Login {
        #[command(flatten)]
        entry: login::args::EntryArgs,
        #[command(flatten)]
        sign_in: login::args::SignInArgs,
        /// Sign in even when the cached token is still good.
        #[arg(long)]
        force_refresh: bool,
    },
    /// Delete cached tokens and revoke their refresh tokens at the provider.
    Logout(login::args::LogoutArgs),
    /// Print a kubeconfig for a gateway whose user runs `kubegate get-token` (no token).
    Kubeconfig(login::args::EntryArgs),
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Show which issuer takes a token, each claim rule's result and the mapped user,
    /// without contacting the API server (the issuers' keys are fetched as when serving).
    Explain {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
        /// A file holding the token (never passed on the command line, where `ps` shows it).
        token_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Show how a request is resolved and decided.
    Explain {
        #[command(flatten)]
        source: PolicySource,
        /// The user.
        #[arg(long)]
        user: String,
        /// A group of the user (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The HTTP method, for example GET.
        method: String,
        /// The request path, with an optional ?query.
        target: String,
    },
    /// Run a file of policy test cases; exits 1 on any mismatch.
    Test {
        #[command(flatten)]
        source: PolicySource,
        /// The cases file.
        cases: PathBuf,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PolicySource {
    /// Take the policy named by this gateway configuration.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Take this policy file.
    #[arg(long)]
    policy: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = match init_logging(cli.log_format) {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("kubegate: cannot start logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Buffered log lines first, so a final error is the last thing printed.
    logs.flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::GetToken(args) => {
            app::install_crypto_provider();
            let env = login::Environment::from_process();
            let credential =
                login::plugin::get_token(&args.provider, &args.sign_in, args.force_refresh, &env)
                    .await?;
            // The only line on stdout: kubectl parses all of it.
            println!("{credential}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Login {
            entry,
            sign_in,
            force_refresh,
        } => {
            app::install_crypto_provider();
            let env = login::Environment::from_process();
            if let Some(path) = login::login(&entry, &sign_in, force_refresh, &env).await? {
                println!(
                    "kubeconfig {}: context {} written; try: kubectl --context {} get pods",
                    path.display(),
                    entry.context,
                    entry.context
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logout(args) => {
            app::install_crypto_provider();
            login::logout::logout(&args, &login::Environment::from_process()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Kubeconfig(entry) => {
            print!("{}", login::kubeconfig::render(&entry)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config } => {
            let config = kubegate_config::load(&config)?;
            let mut prepared = app::prepare(&config).await?;
            prepared.reload_on_sighup = true;
            let router = prepared.router();
            let running = prepared.start(router).await?;
            tracing::info!(addr = %running.addr(), "kubegate is listening");
            shutdown_signal().await;
            tracing::info!("shutting down");
            running.shutdown().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let config = kubegate_config::load(&config)?;
            let summary = app::check(&config).await?;
            for w in &summary.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} policy rules, {} issuer(s))",
                config.file.display(),
                summary.rules,
                summary.issuers
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Rbac { config, name } => {
            let config = kubegate_config::load(&config)?;
            print!("{}", kubegate::ops::rbac::cluster_role_yaml(&config, &name));
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev")]
        Command::Dev {
            listen,
            sandbox,
            dir,
            id_token_lifetime,
        } => {
            let env = dev::start(DevOptions {
                listen,
                force_sandbox: sandbox,
                dir,
                id_token_lifetime,
            })
            .await?;
            println!("{}", env.instructions());
            shutdown_signal().await;
            env.running.shutdown().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Explain {
            source,
            user,
            groups,
            method,
            target,
        }) => {
            let policy = load_policy(&source)?;
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target.as_str(), None),
            };
            let path = normalize_path(path).context("the path is not canonical")?;
            let method = method.to_ascii_uppercase();
            let attrs = resolve(&method, &path, query);
            let subject = Subject {
                user,
                groups,
                ..Subject::default()
            };
            let decision = policy.decide(&subject, &attrs);
            print_attributes(&attrs);
            println!(
                "decision:    {}",
                if decision.allowed { "allow" } else { "deny" }
            );
            println!("reason:      {}", decision.reason());
            if let Some(f) = &decision.forward_as {
                println!("forward as:  {} groups {:?}", f.user, f.groups);
            }
            Ok(if decision.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Auth(AuthCommand::Explain { config, token_file }) => {
            explain_token(&config, &token_file).await
        }
        Command::Policy(PolicyCommand::Test { source, cases }) => {
            let policy = load_policy(&source)?;
            let text = std::fs::read_to_string(&cases)
                .with_context(|| format!("cannot read {}", cases.display()))?;
            let report = kubegate_policy::run_cases(&policy, &cases.display().to_string(), &text)?;
            for failure in &report.failures {
                println!("FAIL {failure}");
            }
            println!(
                "{} passed, {} failed",
                report.total - report.failures.len(),
                report.failures.len()
            );
            Ok(if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn explain_token(
    config: &std::path::Path,
    token_file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    let config = kubegate_config::load(config)?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?;
    let mut verifiers = Vec::new();
    for issuer in &config.auth.oidc {
        let v = Arc::new(kubegate::authn::IssuerVerifier::new(issuer.clone())?);
        if let Err(e) = v.refresh_keys().await {
            eprintln!("warning: issuer {}: keys not loaded: {e}", issuer.issuer);
        }
        verifiers.push(v);
    }
    let authn = kubegate::authn::Authenticator::new(verifiers, &config.auth, vec![]);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {}", token.trim())
            .parse()
            .context("the token file does not hold a token")?,
    );
    let identity = match authn.verify_token(&headers).await {
        Ok(identity) => identity,
        Err(e) => {
            println!("result:   refused ({}): {e}", e.category());
            return Ok(ExitCode::from(2));
        }
    };
    let iss = identity
        .claims
        .get("iss")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    println!("issuer:   {iss}");
    if let Some(rules) = config
        .auth
        .oidc
        .iter()
        .find(|i| i.issuer == iss)
        .and_then(|i| i.claim_rules.as_ref())
    {
        for rule in kubegate::authn::mapping::evaluate(rules, &identity.claims).rules {
            println!(
                "rule:     {} {}",
                if rule.passed { "pass" } else { "FAIL" },
                rule.rule
            );
        }
    }
    println!("username: {}", identity.user);
    println!("uid:      {}", identity.uid.as_deref().unwrap_or("(none)"));
    println!("groups:   {:?}", identity.groups);
    for (key, values) in &identity.extra {
        println!("extra:    {key} = {values:?}");
    }
    Ok(ExitCode::SUCCESS)
}

fn load_policy(source: &PolicySource) -> anyhow::Result<Policy> {
    let path = match (&source.config, &source.policy) {
        (Some(config), _) => kubegate_config::load(config)?.policy.value,
        (None, Some(policy)) => policy.clone(),
        (None, None) => anyhow::bail!("name a --config or a --policy"),
    };
    let (policy, warnings) = kubegate::pipeline::authz::load_policy(&path)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(policy)
}

fn print_attributes(attrs: &RequestAttributes) {
    match attrs {
        RequestAttributes::Resource(r) => {
            println!("kind:        resource request");
            println!("verb:        {}", r.verb);
            println!("api group:   {:?}", r.api_group);
            println!("api version: {}", r.api_version);
            println!("resource:    {}", r.resource);
            println!("subresource: {}", r.subresource);
            println!("namespace:   {}", r.namespace);
            println!("name:        {}", r.name);
        }
        RequestAttributes::NonResource(n) => {
            println!("kind:        non-resource request");
            println!("verb:        {}", n.verb);
            println!("path:        {}", n.path);
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Logs go to stderr through [`LingeringStderr`]; the returned flusher writes out what is
/// still buffered when the process is about to exit.
fn init_logging(format: LogFormat) -> std::io::Result<LogFlusher> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KUBEGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let (writer, flusher) = LingeringStderr::start()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(flusher)
}
