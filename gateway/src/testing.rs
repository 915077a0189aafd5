//! Helpers the crate's unit tests share.

use std::time::Duration;

/// Waits until `check` holds, polling every 25 ms for at most 10 s, and panics naming
/// `what` if it never does. For effects that land on another task or thread.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}
