//! Opening the sign-in page: the `--browser-command` (or `$BROWSER`), else the desktop's
//! default browser (the `open` crate), and always the URL on stderr for the person to copy.
//!
//! Stdout is kubectl's (it holds only the `ExecCredential`), so a browser command's
//! output goes to stderr. The browser is not part of kubectl's job: it runs in its own
//! process group, so neither a Ctrl-C at kubectl nor the terminal's hang-up when kubectl
//! ends closes the window the person is signing in with (as `open` detaches it too).

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
                .process_group(0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    /// The process group in a `/proc/<pid>/stat` line: the third field after the
    /// parenthesised command name.
    fn process_group(stat: &str) -> u32 {
        let fields = stat.rsplit(") ").next().expect("a stat line");
        fields
            .split(' ')
            .nth(2)
            .and_then(|f| f.parse().ok())
            .expect("a process group id")
    }

    /// The browser command's process group is its own, not the plugin's (kubectl's job),
    /// so the terminal's SIGHUP when kubectl exits does not reach it.
    #[tokio::test]
    async fn the_browser_command_runs_in_its_own_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stat");
        let script = dir.path().join("browser.sh");
        let body = format!(
            "#!/bin/sh\ncat /proc/$$/stat > {0}.tmp && mv {0}.tmp {0}\n",
            out.display()
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, PermissionsExt::from_mode(0o700)).unwrap();
        let flag = format!("--browser-command={}", script.display());
        open(
            "http://127.0.0.1:1/",
            "test",
            &SignInArgs::parse_for_test(&[&flag]),
        );

        let deadline = Instant::now() + Duration::from_secs(20);
        let theirs = loop {
            if let Ok(stat) = std::fs::read_to_string(&out) {
                break process_group(&stat);
            }
            assert!(Instant::now() < deadline, "the browser command never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ours = process_group(&std::fs::read_to_string("/proc/self/stat").unwrap());
        assert_ne!(
            theirs, ours,
            "the browser command shares the plugin's process group"
        );
    }
}
