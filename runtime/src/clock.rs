//! The runtime's clock: maps tokio's monotonic time to the core's [`Instant`].
//!
//! The origin is the Unix epoch, read once per process, so that times written
//! to the store by different processes (failure timestamps, S7) are
//! comparable; after that, time only moves forward with tokio's clock.
//!
//! Under `--cfg madsim` both clocks are the simulated world's, which starts
//! anew with every simulated runtime; the pair is read at every call instead
//! of once per process, so that a run does not depend on the runs before it
//! in the same process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use taskgraph_core::Instant;

#[derive(Clone, Copy)]
struct Base {
    tokio: tokio::time::Instant,
    unix: Duration,
}

fn read() -> Base {
    Base {
        tokio: tokio::time::Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    }
}

#[cfg(not(madsim))]
fn base() -> Base {
    static BASE: std::sync::OnceLock<Base> = std::sync::OnceLock::new();
    *BASE.get_or_init(read)
}

#[cfg(madsim)]
fn base() -> Base {
    // Both simulated clocks advance together: any instant's pair maps one
    // onto the other.
    read()
}

/// The core's notion of now.
pub fn now() -> Instant {
    let b = base();
    Instant::from_duration(b.unix + b.tokio.elapsed())
}

/// The tokio instant at which the core's instant `at` falls (now, if `at`
/// is before the origin of the mapping).
pub fn to_tokio(at: Instant) -> tokio::time::Instant {
    let b = base();
    let offset = at.since_origin().saturating_sub(b.unix);
    b.tokio + offset
}
