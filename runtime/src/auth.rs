//! Peer authentication: the nodes of a job share a secret, and each side of
//! a connection proves that it knows it before any message reaches the core.
//!
//! The proof is an HMAC-SHA256 challenge-response over both sides' fresh
//! nonces (sent in the handshake), the job, both node ids and the
//! direction, so a proof cannot be replayed on another connection or
//! reflected back. HMAC over a shared secret was chosen over TLS with a job
//! CA: there is nothing to issue, rotate or distribute but the one secret
//! the job already needs, and it runs unchanged in the simulator. It
//! authenticates peers; it does not encrypt frames (run the job on a
//! network you trust, or under a VPN, for confidentiality).
//!
//! A node without a secret proves with an empty key, so two such nodes
//! still talk, and a node with a secret refuses them.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use taskgraph_core::NodeId;

/// The secret the nodes of one job share. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct JobSecret(Arc<[u8]>);

impl JobSecret {
    /// The name of the environment variable the examples read the secret from.
    pub const ENV: &'static str = "TASKGRAPH_JOB_SECRET";

    /// A secret from its bytes. Fails on an empty one (which would be no
    /// secret at all).
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<JobSecret, AuthError> {
        let b = bytes.as_ref();
        if b.is_empty() {
            return Err(AuthError::EmptySecret);
        }
        Ok(JobSecret(Arc::from(b)))
    }

    /// The secret in environment variable `var`, if it is set (an empty
    /// value is an error, not "no secret").
    pub fn from_env(var: &str) -> Result<Option<JobSecret>, AuthError> {
        match std::env::var_os(var) {
            None => Ok(None),
            Some(v) => JobSecret::new(v.as_encoded_bytes()).map(Some),
        }
    }
}

impl std::fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecret(<redacted>)")
    }
}

/// Why a secret or a proof was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// An empty secret was given.
    #[error("the job secret must not be empty")]
    EmptySecret,
    /// The peer's proof did not match: it does not know the job's secret.
    #[error("the peer did not prove it knows the job's secret")]
    BadProof,
}

/// Which side of a connection a proof comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The node that opened the connection.
    Connector,
    /// The node that accepted it.
    Acceptor,
}

/// What a proof covers: the job, both nodes and both nonces of one
/// connection.
#[derive(Clone, Copy, Debug)]
pub struct Challenge {
    /// `wire::job_tag` of the job.
    pub job: u64,
    /// The connecting node and its nonce.
    pub connector: (NodeId, u128),
    /// The accepting node and its nonce.
    pub acceptor: (NodeId, u128),
}

fn mac(secret: Option<&JobSecret>, side: Side, c: &Challenge) -> Hmac<Sha256> {
    let key: &[u8] = secret.map_or(&[], |s| &s.0);
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(match side {
        Side::Connector => b"taskgraph connector proof v1",
        Side::Acceptor => b"taskgraph acceptor proof v1\0",
    });
    m.update(&c.job.to_be_bytes());
    m.update(&c.connector.0 .0.to_be_bytes());
    m.update(&c.connector.1.to_be_bytes());
    m.update(&c.acceptor.0 .0.to_be_bytes());
    m.update(&c.acceptor.1.to_be_bytes());
    m
}

/// The proof `side` sends for challenge `c`.
pub fn proof(secret: Option<&JobSecret>, side: Side, c: &Challenge) -> Vec<u8> {
    mac(secret, side, c).finalize().into_bytes().to_vec()
}

/// Checks, in constant time, the proof `side` sent for challenge `c`.
pub fn verify(
    secret: Option<&JobSecret>,
    side: Side,
    c: &Challenge,
    proof: &[u8],
) -> Result<(), AuthError> {
    mac(secret, side, c)
        .verify_slice(proof)
        .map_err(|_| AuthError::BadProof)
}

/// A fresh nonce: unique per call within a thread (a counter hashed with a
/// new set of std's random hash keys each time), unpredictable across
/// processes, and in the simulator a function of the seed.
pub fn nonce() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        // Per thread, so that one simulated run (a thread of its own) does
        // not depend on the runs before it.
        static COUNTER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = COUNTER.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(salt);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Challenge {
        Challenge {
            job: 7,
            connector: (NodeId(1), 11),
            acceptor: (NodeId(2), 22),
        }
    }

    #[test]
    fn a_proof_verifies_only_with_the_same_secret_side_and_challenge() {
        let s = JobSecret::new("s3cret").expect("secret");
        let other = JobSecret::new("other").expect("secret");
        let c = challenge();
        let p = proof(Some(&s), Side::Connector, &c);
        assert_eq!(verify(Some(&s), Side::Connector, &c, &p), Ok(()));
        assert_eq!(
            verify(Some(&other), Side::Connector, &c, &p),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            verify(None, Side::Connector, &c, &p),
            Err(AuthError::BadProof)
        );
        // Reflected back as the other side's proof.
        assert_eq!(
            verify(Some(&s), Side::Acceptor, &c, &p),
            Err(AuthError::BadProof)
        );
        // Replayed on a connection with another nonce.
        let mut c2 = c;
        c2.acceptor.1 = 23;
        assert_eq!(
            verify(Some(&s), Side::Connector, &c2, &p),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            verify(Some(&s), Side::Connector, &c, &p[..16]),
            Err(AuthError::BadProof)
        );
        // Without secrets on both sides, the empty key still checks the rest.
        let q = proof(None, Side::Acceptor, &c);
        assert_eq!(verify(None, Side::Acceptor, &c, &q), Ok(()));
    }

    #[test]
    fn the_secret_is_never_shown_and_never_empty() {
        let s = JobSecret::new("hunter2").expect("secret");
        assert_eq!(format!("{s:?}"), "JobSecret(<redacted>)");
        assert_eq!(JobSecret::new(""), Err(AuthError::EmptySecret));
    }

    #[test]
    fn nonces_do_not_repeat() {
        let v: std::collections::BTreeSet<u128> = (0..1000).map(|_| nonce()).collect();
        assert_eq!(v.len(), 1000);
    }
}
