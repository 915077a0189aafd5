//! Opening the sign-in page: the `--browser-command` (or `$BROWSER`), else the desktop's
//! default browser (the `open` crate), and always the URL on stderr for the person to copy.
//!
//! Stdout is kubectl's (it holds only the `ExecCredential`), so a browser command's
//! output goes to stderr.

use std::os::fd::AsFd;
use std::process::Stdio;

use super::args::SignInArgs;

/// Shows `url` to the person: prints it, and opens it unless `--skip-open-browser`.
pub fn open(url: &str, what: &str, args: &SignInArgs) {
    eprintln!("kubegate: {what}, open this URL in a browser:\n  {url}");
    if args.skip_open_browser {
        return;
    }
    let opened = match &args.browser_command {
        Some(command) => {
            let stdout = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null());
            tokio::process::Command::new(command)
                .arg(url)
                .stdin(Stdio::null())
                .stdout(stdout)
                .spawn()
                .map(drop)
                .map_err(|e| format!("{command}: {e}"))
        }
        None => open::that_detached(url).map_err(|e| e.to_string()),
    };
    if let Err(e) = opened {
        eprintln!("kubegate: could not open a browser ({e}); open the URL above by hand");
    }
}
