//! The runtime's clock: maps tokio's monotonic time to the core's [`Instant`].
//!
//! The origin is the Unix epoch, read once per process, so that times written
//! to the store by different processes (failure timestamps, S7) are
//! comparable; after that, time only moves forward with tokio's clock.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use taskgraph_core::Instant;

struct Base {
    tokio: tokio::time::Instant,
    unix: Duration,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| Base {
        tokio: tokio::time::Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    })
}

/// The core's notion of now.
pub fn now() -> Instant {
    let b = base();
    Instant::from_duration(b.unix + b.tokio.elapsed())
}

/// The tokio instant at which the core's instant `at` falls.
pub fn to_tokio(at: Instant) -> tokio::time::Instant {
    let b = base();
    let offset = at.since_origin().saturating_sub(b.unix);
    b.tokio + offset
}
