//! The TLS client configuration a tunnel's new connections use, and the two things read
//! from files that it is built of: the trust anchors (`--cafile`, else the bundled
//! roots) and the client certificate (`--client-cert`, `--client-key`). Both are read at
//! start (an error stops the tunnel) and again on SIGHUP, when the configuration is
//! rebuilt from the newest good version of each: a bad file keeps what was there before,
//! a good one takes effect from the next connection on.
//!
//! Why only new connections: each open connection holds the configuration it was opened
//! with and its own TLS session, authorized by the server when it started; cutting it to
//! present a new certificate would cost the NFS client a reconnect for nothing.
//!
//! Why a fresh session-resumption store with every rebuilt configuration: a resumed
//! session carries the identity of the handshake that made it, and the server sees no
//! certificate when it resumes one. Resuming from the old store would keep presenting the
//! old pair (whose credentials may be revoked or about to expire) and keep trusting what
//! the old trust anchors verified. So each configuration starts with an empty store, and
//! the first connection after a reload makes a full handshake with the new pair.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use log::{info, warn};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};

use crate::client_cert::{self, ClientCert, ClientCertError, ClientCertFiles};
use crate::control::ClientCertStatus;
use crate::policy::{self, PolicyError, TlsPolicy};

/// Why the configuration could not be built at start.
#[derive(Debug)]
pub enum LoadError {
    Policy(PolicyError),
    ClientCert(ClientCertError),
}

/// The configuration for new connections, and what it was built of.
#[derive(Debug)]
pub struct TlsConfig {
    policy: TlsPolicy,
    client_files: Option<ClientCertFiles>,
    /// Only for loading keys.
    provider: CryptoProvider,
    current: RwLock<Arc<ClientConfig>>,
    parts: Mutex<Parts>,
}

/// The newest good version of each part.
#[derive(Debug)]
struct Parts {
    roots: Arc<RootCertStore>,
    client_cert: Option<ClientCert>,
}

impl TlsConfig {
    /// Reads the CA file and the client pair, and builds the first configuration.
    pub fn load(
        policy: TlsPolicy,
        client_files: Option<ClientCertFiles>,
    ) -> Result<TlsConfig, LoadError> {
        let provider = policy::provider(policy.fips);
        let roots = Arc::new(policy::root_store(&policy.trust).map_err(LoadError::Policy)?);
        let client_cert = match &client_files {
            None => None,
            Some(files) => {
                let cc = ClientCert::load(files, &provider).map_err(LoadError::ClientCert)?;
                info!(
                    "client certificate {}: {}",
                    files.cert.display(),
                    cc.current()
                );
                Some(cc)
            }
        };
        let parts = Parts { roots, client_cert };
        let config = parts.build(&policy).map_err(LoadError::Policy)?;
        Ok(TlsConfig {
            policy,
            client_files,
            provider,
            current: RwLock::new(Arc::new(config)),
            parts: Mutex::new(parts),
        })
    }

    pub fn policy(&self) -> &TlsPolicy {
        &self.policy
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<ClientConfig> {
        match self.current.read() {
            Ok(cfg) => cfg.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// What the status reports about the client certificate (`None` without one).
    pub fn client_cert_status(&self) -> Option<ClientCertStatus> {
        self.parts().client_cert.as_ref().map(ClientCert::status)
    }

    /// SIGHUP: reads the CA file and the client pair again, logs one line for each, and
    /// rebuilds the configuration for new connections from the newest good version of
    /// each (with a fresh session-resumption store: see the module's documentation).
    pub fn reload(&self) {
        // The files are read before the lock is taken: a status request never waits on
        // the disk.
        let roots = match policy::root_store(&self.policy.trust) {
            Ok(roots) => {
                info!("SIGHUP: reloaded trust anchors; new connections use them");
                Some(Arc::new(roots))
            }
            Err(e) => {
                warn!("SIGHUP: keeping the previous trust anchors: {e}");
                None
            }
        };
        let pair = self
            .client_files
            .as_ref()
            .map(|files| (files, client_cert::load(files, &self.provider)));

        let mut parts = self.parts();
        let mut changed = false;
        if let Some(roots) = roots {
            parts.roots = roots;
            changed = true;
        }
        if let (Some(cc), Some((files, outcome))) = (parts.client_cert.as_mut(), pair) {
            match &outcome {
                Ok(pair) => {
                    info!(
                        "SIGHUP: reloaded client certificate {}: {pair}; new connections present it",
                        files.cert.display()
                    );
                    changed = true;
                }
                Err(e) => warn!(
                    "SIGHUP: keeping the previous client certificate ({}): {e}",
                    cc.current()
                ),
            }
            cc.reloaded(outcome);
        }
        if !changed {
            return;
        }
        match parts.build(&self.policy) {
            Ok(config) => match self.current.write() {
                Ok(mut slot) => *slot = Arc::new(config),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(config),
            },
            Err(e) => warn!("SIGHUP: keeping the previous TLS configuration: {e}"),
        }
    }

    fn parts(&self) -> MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Parts {
    /// A new configuration, with an empty session-resumption store of its own.
    fn build(&self, policy: &TlsPolicy) -> Result<ClientConfig, PolicyError> {
        let pair = self.client_cert.as_ref().map(|cc| &cc.current().certified);
        policy::client_config_from(policy, self.roots.clone(), pair)
    }
}
