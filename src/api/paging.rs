//! Paged lists: the `limit` and `next` query parameters the lists of jobs, uploads, webhook
//! endpoints and deliveries take (checked alike everywhere, `400 invalid_query` naming the
//! parameter), and the `next` cursor of their answers: the last item's id when more follow.

use super::problem::ApiError;
use crate::error_code::ErrorCode;

/// The query of a list with no filters of its own: `limit` and `next`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<u64>,
    pub next: Option<String>,
}

/// Items per page when the client gives no `limit`, and the most it may ask for.
pub const DEFAULT_LIMIT: u64 = 50;
pub const MAX_LIMIT: u64 = 200;

/// `400 invalid_query` naming the query parameter `field`.
pub fn invalid_query(field: &str, msg: impl Into<String>) -> ApiError {
    let msg = msg.into();
    ApiError::new(ErrorCode::InvalidQuery, msg.clone()).with_field(field, msg)
}

/// A checked page request: how many items, and the cursor (of type `C`) to continue after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page<C> {
    pub limit: u64,
    pub after: Option<C>,
}

impl<C> Page<C> {
    /// Checks `limit` and reads `next` with `cursor` (`None` from it: not a cursor of this
    /// list).
    pub fn parse(
        limit: Option<u64>,
        next: Option<&str>,
        cursor: impl Fn(&str) -> Option<C>,
    ) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(invalid_query(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let after = next
            .map(|text| {
                cursor(text).ok_or_else(|| {
                    invalid_query(
                        "next",
                        "next must be the cursor returned by the previous page",
                    )
                })
            })
            .transpose()?;
        Ok(Self { limit, after })
    }
}

/// The answer's `next`: `cursor` of the last item when more follow, else none.
pub fn next_cursor<T>(items: &[T], more: bool, cursor: impl Fn(&T) -> String) -> Option<String> {
    items.last().filter(|_| more).map(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors_are_checked() {
        let page = Page::parse(None, Some("7"), |t| t.parse::<i64>().ok()).unwrap();
        assert_eq!(
            page,
            Page {
                limit: DEFAULT_LIMIT,
                after: Some(7)
            }
        );
        assert!(Page::parse(Some(0), None, |t| t.parse::<i64>().ok()).is_err());
        assert!(Page::parse(Some(MAX_LIMIT + 1), None, |t| t.parse::<i64>().ok()).is_err());
        assert!(Page::parse(Some(1), Some("x"), |t| t.parse::<i64>().ok()).is_err());
        assert_eq!(
            next_cursor(&[1, 2], true, |i| i.to_string()),
            Some("2".into())
        );
        assert_eq!(next_cursor(&[1, 2], false, |i| i.to_string()), None);
    }
}
