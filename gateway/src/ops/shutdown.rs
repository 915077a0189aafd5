//! The gateway's shutdown as long-running work sees it: a trigger the gateway pulls once,
//! and signals that watches, log follows and spliced sessions wait on, so they end cleanly
//! when shutdown begins instead of holding their connections until the grace period ends.

/// The gateway's shutdown, as seen by one long-running stream.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

/// Starts a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(tokio::sync::watch::Sender<bool>);

impl ShutdownTrigger {
    /// A trigger and the signal it drives.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Signals every stream to end.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }

    /// A new signal receiver.
    pub fn signal(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown has begun (never, if its trigger is gone without firing).
    pub async fn wait(mut self) {
        if self.0.wait_for(|down| *down).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_signal_sees_the_trigger_and_none_fires_early() {
        let (trigger, first) = ShutdownTrigger::new();
        let second = trigger.signal();
        let early = tokio::time::timeout(Duration::from_secs(60), first.clone().wait()).await;
        assert!(early.is_err(), "no shutdown yet");
        trigger.trigger();
        first.wait().await;
        second.wait().await;
        // A signal taken after the trigger sees it too.
        trigger.signal().wait().await;
    }
}
