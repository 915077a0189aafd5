//! The real browser of the sign-in tests: Debian's `chromium` (installed by the test when
//! missing and running as root, else the test fails with the reason) and tests/browser's
//! puppeteer-core scripts that drive it through the DevTools protocol.

use std::path::PathBuf;
use std::process::Command;

/// Debian's chromium (`$CHROMIUM` overrides the path), installed when missing and running
/// as root; otherwise the test fails with the reason.
pub fn chromium() -> PathBuf {
    let path =
        PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if path.is_file() {
        return path;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    assert!(
        root,
        "chromium is not installed at {} and this is not root: install Debian's chromium package (apt-get install chromium) to run the browser test",
        path.display()
    );
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
        ])
        .status()
        .expect("apt-get runs");
    assert!(
        status.success() && path.is_file(),
        "installing Debian's chromium package failed"
    );
    path
}

/// tests/browser, with its locked dependencies (puppeteer-core) installed once.
pub fn browser_driver() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join("node_modules/puppeteer-core").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm must be installed to drive the browser (Node 20 + npm)");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
    dir
}
