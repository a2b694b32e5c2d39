//! Shutdown, as one small type (after tokio's mini-redis): the tunnel's `run` owns a
//! [`ShutdownTrigger`], every task holds a [`Shutdown`] and selects on
//! [`Shutdown::recv`], and `run` waits for the tasks' [`Shutdown`]s to be dropped, with a
//! deadline, before the process exits.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by every task that must finish before the process exits.
#[derive(Debug, Clone)]
pub struct Shutdown {
    notify: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Shutdown {
    /// Resolves once shutdown has been triggered (at once if it already was).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which is shutdown too.
        let _ = self.notify.wait_for(|&down| down).await;
    }

    pub fn is_shutdown(&self) -> bool {
        *self.notify.borrow()
    }
}

/// Owned by `run`: hands out [`Shutdown`]s, triggers them, and waits for them.
#[derive(Debug)]
pub struct ShutdownTrigger {
    notify: watch::Sender<bool>,
    alive_tx: mpsc::Sender<()>,
    alive_rx: mpsc::Receiver<()>,
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        let (notify, _) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        ShutdownTrigger {
            notify,
            alive_tx,
            alive_rx,
        }
    }
}

impl ShutdownTrigger {
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            notify: self.notify.subscribe(),
            _alive: self.alive_tx.clone(),
        }
    }

    /// Tells every task to finish, then waits up to `deadline` for them. Returns true if
    /// all finished in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        let ShutdownTrigger {
            notify,
            alive_tx,
            mut alive_rx,
        } = self;
        let _ = notify.send(true);
        drop(alive_tx);
        tokio::time::timeout(deadline, alive_rx.recv())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_and_respects_the_deadline() {
        let trigger = ShutdownTrigger::default();
        let mut quick = trigger.subscribe();
        tokio::spawn(async move { quick.recv().await });
        assert!(trigger.drain(Duration::from_secs(5)).await);

        let trigger = ShutdownTrigger::default();
        let stuck = trigger.subscribe();
        let handle = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stuck);
        });
        assert!(!trigger.drain(Duration::from_millis(50)).await);
        handle.abort();
    }
}
