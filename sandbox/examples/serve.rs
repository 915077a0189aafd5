//! Runs a sandbox by hand: `cargo run -p kubegate-sandbox --example serve -- KUBECONFIG_PATH`
//! writes a kubeconfig for it and serves until Ctrl-C, printing each request it records.

use std::time::Duration;

use kubegate_sandbox::{Sandbox, SandboxOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: serve KUBECONFIG_PATH")?;
    let sandbox = Sandbox::start(SandboxOptions::new("sandbox-token")).await?;
    sandbox.write_kubeconfig(path.as_ref())?;
    println!("sandbox at {}; kubeconfig written to {path}", sandbox.url());
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for r in sandbox.requests().iter().skip(seen) {
            let accept = r.header_values("accept").join(", ");
            println!(
                "{} {} authorized={} accept={accept}",
                r.method, r.path_and_query, r.authorized
            );
        }
        seen = sandbox.request_count();
    }
    sandbox.shutdown().await;
    Ok(())
}
