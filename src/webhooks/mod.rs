//! Webhook callbacks: what may be subscribed to and how a subscription is checked
//! ([`Subscription`]), secrets and signatures ([`signing`], Standard Webhooks), which receiver
//! addresses are allowed ([`address`], the SSRF guard), when a failed delivery is tried again
//! ([`schedule`]), what is sent ([`payload`]) and the background sender ([`deliverer`]).
//!
//! The outbox rows themselves are written with the events, by a trigger on the events table (see
//! `storage::outbox`); endpoints are managed in `service::webhooks`.

pub mod address;
pub mod deliverer;
pub mod payload;
pub mod schedule;
pub mod signing;

use sea_orm::Iterable;
use url::Url;

use crate::domain::EventKind;

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// What a webhook URL looks like: http(s), a host name or IP literal (no credentials), an
/// optional port, and printable ASCII after it. `openapi.yaml` states the same pattern
/// (`WebhookUrl`; a unit test keeps the two equal), so what the spec calls valid and what the
/// server accepts agree; the `url` crate alone also takes hosts such as `0*`.
pub const URL_PATTERN: &str = concat!(
    r"^[hH][tT][tT][pP][sS]?://",
    r"([A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])",
    r"(:[0-9]{1,5})?([/?#][!-~]*)?$"
);

fn url_shape() -> &'static regex::Regex {
    static SHAPE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    SHAPE.get_or_init(|| regex::Regex::new(URL_PATTERN).expect("a valid pattern"))
}

/// A checked endpoint request: an http(s) URL and the event types it wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub url: Url,
    /// Event type names, in [`EventKind`] order, without duplicates.
    pub events: Vec<String>,
}

/// Every event type a webhook may ask for: the kinds of the job event log.
pub fn event_types() -> Vec<String> {
    EventKind::iter()
        .map(|kind| sea_orm::ActiveEnum::to_value(&kind))
        .collect()
}

impl Subscription {
    /// Checks `url` (syntax and scheme; addresses are [`address`]'s business) and `events`
    /// (`None` or empty: every type). Errors name the field at fault (`url`, `events`) and say
    /// what is wrong.
    pub fn parse(url: &str, events: Option<&[String]>) -> Result<Self, (&'static str, String)> {
        if url.len() > MAX_URL_LEN {
            return Err((
                "url",
                format!("the URL is longer than {MAX_URL_LEN} characters"),
            ));
        }
        if !url_shape().is_match(url) {
            return Err((
                "url",
                format!(
                    "{url:?} is not an http(s) URL of a host name or IP address (printable \
                     ASCII, no credentials)"
                ),
            ));
        }
        let parsed = Url::parse(url).map_err(|e| ("url", format!("{url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err((
                "url",
                format!("{url:?}: only http and https URLs are allowed"),
            ));
        }
        if parsed.host().is_none() {
            return Err(("url", format!("{url:?} names no host")));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err((
                "url",
                "credentials in the URL are not allowed; receivers verify the signature".into(),
            ));
        }
        let known = event_types();
        let wanted: Vec<String> = match events {
            None | Some([]) => known.clone(),
            Some(list) => {
                if let Some(bad) = list.iter().find(|e| !known.contains(e)) {
                    return Err((
                        "events",
                        format!("unknown event type {bad:?}; known: {}", known.join(", ")),
                    ));
                }
                known.iter().filter(|k| list.contains(k)).cloned().collect()
            }
        };
        Ok(Self {
            url: parsed,
            events: wanted,
        })
    }

    /// The `events` column: `,a,b,` (see `storage::outbox`).
    pub fn events_column(&self) -> String {
        format!(",{},", self.events.join(","))
    }
}

/// The event types of an `events` column.
pub fn events_of_column(column: &str) -> Vec<String> {
    column
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_states_the_same_url_pattern() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
            .expect("openapi.yaml");
        let spec: serde_json::Value = serde_norway::from_str(&text).expect("YAML");
        assert_eq!(
            spec["components"]["schemas"]["WebhookUrl"]["pattern"],
            URL_PATTERN
        );
    }

    #[test]
    fn subscriptions_check_scheme_and_event_names() {
        let all = Subscription::parse("https://example.org/hook", None).unwrap();
        assert_eq!(all.events, event_types());
        assert_eq!(events_of_column(&all.events_column()), all.events);
        let some = Subscription::parse(
            "http://example.org/h",
            Some(&["succeeded".into(), "started".into()]),
        )
        .unwrap();
        assert_eq!(some.events, ["started", "succeeded"]);
        assert_eq!(
            Subscription::parse("ftp://example.org/", None)
                .unwrap_err()
                .0,
            "url"
        );
        for bad in [
            "http://0*",
            "http://a b/",
            "http://example.org/é",
            "https://@x/",
        ] {
            assert!(Subscription::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Subscription::parse("http://[2606:4700::1111]:8443/h?x=1", None).is_ok());
        assert_eq!(
            Subscription::parse("https://u:p@example.org/", None)
                .unwrap_err()
                .0,
            "url"
        );
        assert_eq!(
            Subscription::parse("https://example.org/", Some(&["finished".into()]))
                .unwrap_err()
                .0,
            "events"
        );
    }
}
