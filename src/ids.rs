//! Public identifiers: UUIDv7 shown with a readable prefix (`job_…`, `upl_…`, `res_…`, `key_…`,
//! `rrb_…` for a bulk re-run).
//! The prefix makes a pasted id self-describing and stops a job id being used as an upload id.

use std::fmt;
use uuid::Uuid;

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses `prefix_<32 hex digits>`; `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                let hex = s.strip_prefix($prefix)?.strip_prefix('_')?;
                if hex.len() != 32 {
                    return None;
                }
                Uuid::try_parse(hex).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }
    };
}

prefixed_id!(JobId, "job");
prefixed_id!(UploadId, "upl");
prefixed_id!(ResultId, "res");
prefixed_id!(WebhookId, "whk");
prefixed_id!(KeyId, "key");
prefixed_id!(RerunBatchId, "rrb");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_prefixes() {
        let id = JobId::new();
        let text = id.to_string();
        assert!(text.starts_with("job_"));
        assert_eq!(JobId::parse(&text), Some(id));
        assert_eq!(UploadId::parse(&text), None);
        assert_eq!(JobId::parse("job_../../etc"), None);
    }
}
