//! Deliberately broken behaviours that prove the simulator's checkers can
//! fail. A canary is switched on through `NodeConfig::canary`, a field that
//! exists only in `--cfg madsim` builds: production builds cannot turn one
//! on, and in them every canary check compiles to `false`.

/// One deliberately broken behaviour of a [`Node`](crate::Node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Canary {
    /// A primary whose lease deadline passes keeps acting as primary
    /// (breaks S2/S3: two primaries at once).
    SkipStepDown,
    /// A neighbour's death is reported twice in the event stream (breaks S4).
    NeighbourDiedTwice,
    /// Messages from a fenced incarnation are accepted (breaks S3).
    AcceptFenced,
    /// A dead neighbour's replacement is never reported (breaks S5).
    NoRestartNotice,
}

impl Canary {
    /// Every canary.
    pub const ALL: [Canary; 4] = [
        Canary::SkipStepDown,
        Canary::NeighbourDiedTwice,
        Canary::AcceptFenced,
        Canary::NoRestartNotice,
    ];

    /// The canary's name on the command line (`skip-step-down`, …).
    pub fn name(self) -> &'static str {
        match self {
            Canary::SkipStepDown => "skip-step-down",
            Canary::NeighbourDiedTwice => "neighbour-died-twice",
            Canary::AcceptFenced => "accept-fenced",
            Canary::NoRestartNotice => "no-restart-notice",
        }
    }

    /// The canary named `name`, if any.
    pub fn from_name(name: &str) -> Option<Canary> {
        Canary::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Canary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Canary::ALL {
            assert_eq!(Canary::from_name(c.name()), Some(c));
        }
        assert_eq!(Canary::from_name("nope"), None);
    }
}
