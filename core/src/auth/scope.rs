//! Scopes as authentication.txt lists them, and the shorthands that expand to
//! several of them. Tokens keep the scopes as granted; they are expanded here,
//! at check time.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    JobsCreate,
    JobsRead,
    JobsPoll,
    JobsAck,
    JobsProgress,
    JobsEvent,
    JobsComplete,
    JobsFail,
    JobsKeepalive,
    JobsKill,
    /// An operator's retry of a dead or killed job.
    JobsRetry,
    /// An operator's delete of a finished job.
    JobsDelete,
    JobsReadProgress,
    /// Live feeds only: the space stream and job streams, with full data
    /// (websockets.txt's "Dashboard live feed"); no REST reads.
    JobsReadSpace,
}

impl Scope {
    pub const ALL: [Scope; 14] = [
        Self::JobsCreate,
        Self::JobsRead,
        Self::JobsPoll,
        Self::JobsAck,
        Self::JobsProgress,
        Self::JobsEvent,
        Self::JobsComplete,
        Self::JobsFail,
        Self::JobsKeepalive,
        Self::JobsKill,
        Self::JobsRetry,
        Self::JobsDelete,
        Self::JobsReadProgress,
        Self::JobsReadSpace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobsCreate => "jobs:create",
            Self::JobsRead => "jobs:read",
            Self::JobsPoll => "jobs:poll",
            Self::JobsAck => "jobs:ack",
            Self::JobsProgress => "jobs:progress",
            Self::JobsEvent => "jobs:event",
            Self::JobsComplete => "jobs:complete",
            Self::JobsFail => "jobs:fail",
            Self::JobsKeepalive => "jobs:keepalive",
            Self::JobsKill => "jobs:kill",
            Self::JobsRetry => "jobs:retry",
            Self::JobsDelete => "jobs:delete",
            Self::JobsReadProgress => "jobs:read:progress",
            Self::JobsReadSpace => "jobs:read:space",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const WRITE: &[Scope] = &[
    Scope::JobsAck,
    Scope::JobsProgress,
    Scope::JobsEvent,
    Scope::JobsComplete,
    Scope::JobsFail,
    Scope::JobsKeepalive,
];

const WORKER_EXTRA: &[Scope] = &[Scope::JobsRead, Scope::JobsPoll];

fn expand(name: &str) -> Option<Vec<Scope>> {
    match name {
        "jobs:worker" => Some(WORKER_EXTRA.iter().chain(WRITE).copied().collect()),
        "jobs:write" => Some(WRITE.to_vec()),
        _ => Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == name)
            .map(|scope| vec![scope]),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(u16);

impl ScopeSet {
    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |bits, scope| bits | scope.bit()))
    }

    /// Read scopes nest: `jobs:read` sees everything `jobs:read:space`
    /// sees, and that everything `jobs:read:progress` sees.
    pub fn allows(self, scope: Scope) -> bool {
        let held = |s: Scope| self.0 & s.bit() != 0;
        match scope {
            Scope::JobsReadSpace => held(scope) || held(Scope::JobsRead),
            Scope::JobsReadProgress => {
                held(scope) || held(Scope::JobsReadSpace) || held(Scope::JobsRead)
            }
            _ => held(scope),
        }
    }

    /// The scopes held, by name.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|scope| self.0 & scope.bit() != 0)
            .map(Scope::as_str)
            .collect()
    }

    /// The read scopes of this set only: what a dashboard session of a
    /// space key may do (a read-only view of its space).
    pub fn read_only(self) -> Self {
        let read = Self::of(&[
            Scope::JobsRead,
            Scope::JobsReadSpace,
            Scope::JobsReadProgress,
        ]);
        Self(self.0 & read.0)
    }

    pub fn require(self, scope: Scope) -> Result<()> {
        if self.allows(scope) {
            Ok(())
        } else {
            Err(Error::MissingScope(scope))
        }
    }
}

/// Parses scopes as granted (shorthands allowed); unknown names are refused.
pub fn parse_scopes(names: &[String]) -> Result<ScopeSet> {
    if names.is_empty() {
        return Err(Error::invalid("scopes must name at least one scope"));
    }
    let mut scopes = Vec::new();
    for name in names {
        let expanded =
            expand(name).ok_or_else(|| Error::invalid(format!("unknown scope: {name}")))?;
        scopes.extend(expanded);
    }
    Ok(ScopeSet::of(&scopes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> ScopeSet {
        parse_scopes(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn shorthands_expand_as_documented() {
        let worker = set(&["jobs:worker"]);
        for scope in [
            Scope::JobsRead,
            Scope::JobsPoll,
            Scope::JobsAck,
            Scope::JobsKeepalive,
            Scope::JobsReadProgress,
        ] {
            assert!(worker.allows(scope), "{scope}");
        }
        assert!(!worker.allows(Scope::JobsCreate));
        assert!(!worker.allows(Scope::JobsKill));
        let write = set(&["jobs:write"]);
        assert!(write.allows(Scope::JobsFail) && !write.allows(Scope::JobsPoll));
    }

    #[test]
    fn progress_scope_does_not_grant_read() {
        let progress = set(&["jobs:read:progress"]);
        assert!(progress.allows(Scope::JobsReadProgress));
        assert_eq!(
            progress.require(Scope::JobsRead).unwrap_err().to_string(),
            "Missing required scope: jobs:read"
        );
    }

    #[test]
    fn the_live_feed_scope_grants_streams_but_no_rest_reads() {
        let feed = set(&["jobs:read:space"]);
        assert!(feed.allows(Scope::JobsReadSpace));
        assert!(feed.allows(Scope::JobsReadProgress));
        assert!(!feed.allows(Scope::JobsRead));
        assert!(set(&["jobs:read"]).allows(Scope::JobsReadSpace));
        assert!(!set(&["jobs:read:progress"]).allows(Scope::JobsReadSpace));
    }

    #[test]
    fn unknown_scopes_are_refused() {
        let error = parse_scopes(&["jobs:everything".into()]).unwrap_err();
        assert_eq!(error.to_string(), "unknown scope: jobs:everything");
    }
}
