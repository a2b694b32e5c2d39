//! Shutdown, as one small type (after tokio's mini-redis): the tunnel's `run` owns a
//! [`ShutdownTrigger`], every task holds a [`Shutdown`] and selects on
//! [`Shutdown::recv`], and `run` waits for the tasks' [`Shutdown`]s to be dropped, with a
//! deadline, before the process exits.
//!
//! And the signals that ask for it, or for a reload ([`Signals`]): SIGTERM and SIGINT
//! stop the tunnel, SIGHUP makes it read its files again. Every one of them is handled
//! once `run` has started, so none of them kills the tunnel by its default action.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// What a signal asks of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM, SIGINT: close the connections and exit 0.
    Stop,
    /// SIGHUP: read the CA file and the client certificate again, for new connections.
    Reload,
}

/// The signals a tunnel answers.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next request. Cancel-safe: a signal that arrives while the caller is busy
    /// elsewhere is returned by the next call.
    pub async fn recv(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => Request::Stop,
            _ = self.int.recv() => Request::Stop,
            _ = self.hup.recv() => Request::Reload,
        }
    }
}

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
