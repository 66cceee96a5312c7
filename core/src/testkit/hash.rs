//! The 128-bit trace hash (FNV-1a) that names one run: two runs with the
//! same hash saw the same inputs and outputs at the same virtual times.

const FNV_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

/// A running FNV-1a hash of 128 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceHash(u128);

impl Default for TraceHash {
    fn default() -> Self {
        TraceHash(FNV_OFFSET)
    }
}

impl TraceHash {
    /// The hash of nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds `bytes` in.
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u128::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// The hash so far.
    pub fn value(&self) -> u128 {
        self.0
    }
}

impl std::fmt::Display for TraceHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_content_change_the_hash() {
        let h = |parts: &[&str]| {
            let mut t = TraceHash::new();
            for p in parts {
                t.update(p.as_bytes());
            }
            t.value()
        };
        assert_eq!(h(&["a", "b"]), h(&["a", "b"]));
        assert_ne!(h(&["a", "b"]), h(&["b", "a"]));
        assert_ne!(h(&["a"]), h(&[]));
        assert_eq!(format!("{}", TraceHash::new()).len(), 32);
    }
}
