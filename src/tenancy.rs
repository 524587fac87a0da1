//! Who a request acts for: a [`Tenant`] (every stored object belongs to one), the [`Scope`]s
//! an API key grants, and the [`Caller`] the API layer makes of a request's key. Depends on
//! nothing else in the crate: the storage layer scopes its reads by `Tenant`, the service layer
//! takes one from its callers, the API layer makes them.

use std::fmt;

/// The tenant of rows made before tenants existed, and the one an open (keyless) server's
/// requests act for.
pub const DEFAULT_TENANT: &str = "default";
/// Longest tenant name (the database column's width).
pub const MAX_TENANT_LEN: usize = 63;

/// A tenant's name: 1–63 of `a-z 0-9 _ -`, starting with a letter or digit. Names are all a
/// tenant is; there is no table of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

impl Tenant {
    pub fn parse(name: &str) -> Result<Tenant, String> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !first_ok || !rest_ok || name.len() > MAX_TENANT_LEN {
            return Err(format!(
                "tenant {name:?} is not a tenant name: 1-{MAX_TENANT_LEN} characters of a-z, 0-9, \
                 '_' and '-', starting with a letter or digit"
            ));
        }
        Ok(Tenant(name.to_owned()))
    }

    /// The tenant of an open server and of data made before tenants existed.
    pub fn default_tenant() -> Tenant {
        Tenant(DEFAULT_TENANT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an API key may do, within its tenant. Scopes are independent: `admin` (keys and
/// webhook endpoints) does not include reading jobs, so a key is given exactly what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read jobs, their events and logs, and uploads.
    JobsRead,
    /// Upload, create, cancel and delete jobs and uploads.
    JobsWrite,
    /// Read and download results.
    ResultsRead,
    /// Manage the tenant's API keys and webhook endpoints; read its audit trail.
    Admin,
    /// Move kinds' tags (deploy a model version): every tenant's jobs follow them, so an
    /// operator's key, not a tenant's, should hold it.
    KindsWrite,
    /// Read `GET /metrics`: counts of every tenant's jobs, so an operator's (Prometheus') key.
    MetricsRead,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::JobsRead,
        Scope::JobsWrite,
        Scope::ResultsRead,
        Scope::Admin,
        Scope::KindsWrite,
        Scope::MetricsRead,
    ];
    /// Scopes about every tenant, which only an operator grants (on the command line), never a
    /// tenant's admin over the API.
    pub const OPERATOR: [Scope; 2] = [Scope::KindsWrite, Scope::MetricsRead];
    /// What `ferry keys create` gives when no scope is named: everything but `admin` and
    /// `kinds:write`.
    pub const DEFAULT: [Scope; 3] = [Scope::JobsRead, Scope::JobsWrite, Scope::ResultsRead];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::JobsRead => "jobs:read",
            Scope::JobsWrite => "jobs:write",
            Scope::ResultsRead => "results:read",
            Scope::Admin => "admin",
            Scope::KindsWrite => "kinds:write",
            Scope::MetricsRead => "metrics:read",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope {text:?}; scopes are {}", known.join(", "))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, stored as their names separated by spaces, in [`Scope::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scope::ALL.into_iter().collect()
    }

    /// What a key gets when no scope is named ([`Scope::DEFAULT`]).
    pub fn default_set() -> Scopes {
        Scope::DEFAULT.into_iter().collect()
    }

    /// Scopes by name; the first unknown name is the error.
    pub fn parse_all(names: &[String]) -> Result<Scopes, String> {
        names.iter().map(|name| Scope::parse(name)).collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & Self::bit(scope) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The stored form (`jobs:read jobs:write`).
    pub fn column(self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }

    /// Reads the stored form; an unknown name (written by a newer version) grants nothing.
    pub fn from_column(text: &str) -> Scopes {
        text.split_whitespace()
            .filter_map(|s| Scope::parse(s).ok())
            .collect()
    }

    fn bit(scope: Scope) -> u8 {
        1 << (scope as u8)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |bits, s| bits | Scopes::bit(s)))
    }
}

/// Who made a request: the key it came with (none on an open server), the tenant that key acts
/// for and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The API key's id; `None` on an open server (no keys exist, loopback only).
    pub key_id: Option<uuid::Uuid>,
    pub tenant: Tenant,
    pub scopes: Scopes,
}

impl Caller {
    /// A request to an open server: the default tenant, every scope.
    pub fn open() -> Caller {
        Caller {
            key_id: None,
            tenant: Tenant::default_tenant(),
            scopes: Scopes::all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_checked() {
        for good in ["default", "a", "radiology-2", "x_y", &"a".repeat(63)] {
            assert_eq!(Tenant::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "-a", "_a", "A", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scopes_read_back_as_stored() {
        let scopes: Scopes = [Scope::Admin, Scope::JobsRead].into_iter().collect();
        assert_eq!(scopes.column(), "jobs:read admin");
        assert_eq!(Scopes::from_column(&scopes.column()), scopes);
        assert!(scopes.contains(Scope::Admin) && !scopes.contains(Scope::JobsWrite));
        assert_eq!(Scopes::from_column("jobs:read future:scope"), {
            [Scope::JobsRead].into_iter().collect::<Scopes>()
        });
        assert_eq!(Scopes::all().iter().count(), 6);
        assert_eq!(
            Scopes::all().column(),
            "jobs:read jobs:write results:read admin kinds:write metrics:read"
        );
        assert!(Scopes::from_column("").is_empty());
    }
}
