//! When a failed delivery is tried again: the configured schedule (Svix's by default), with
//! jitter so that receivers coming back are not hit by every retry at once, and a receiver's
//! `Retry-After` honoured when it asks for longer.

use std::time::Duration;

use rand::Rng;

/// Jitter: each delay is moved by up to this fraction either way.
const JITTER: f64 = 0.1;

/// The delay before the next attempt, after `attempts_made` attempts failed; `None` when the
/// schedule is used up. A `Retry-After` longer than the scheduled delay wins, up to the longest
/// delay of the schedule (a receiver cannot park a delivery for a year).
pub fn next_delay(
    schedule: &[Duration],
    attempts_made: usize,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let scheduled = *schedule.get(attempts_made)?;
    let jittered = scheduled.mul_f64(1.0 + rand::rng().random_range(-JITTER..=JITTER));
    let longest = schedule.iter().max().copied().unwrap_or_default();
    Some(match retry_after {
        Some(asked) if asked > jittered => asked.min(longest.max(jittered)),
        _ => jittered,
    })
}

/// Reads a `Retry-After` value: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = at.timestamp_millis() - now_ms;
    Some(Duration::from_millis(ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: [Duration; 3] = [
        Duration::ZERO,
        Duration::from_secs(10),
        Duration::from_secs(100),
    ];

    #[test]
    fn delays_follow_the_schedule_within_the_jitter_and_end_with_it() {
        assert_eq!(next_delay(&SCHEDULE, 0, None), Some(Duration::ZERO));
        let second = next_delay(&SCHEDULE, 1, None).unwrap();
        assert!((9.0..=11.0).contains(&second.as_secs_f64()), "{second:?}");
        assert_eq!(next_delay(&SCHEDULE, 3, None), None);
    }

    #[test]
    fn a_longer_retry_after_wins_up_to_the_longest_delay() {
        let asked = next_delay(&SCHEDULE, 1, Some(Duration::from_secs(50))).unwrap();
        assert_eq!(asked, Duration::from_secs(50));
        let capped = next_delay(&SCHEDULE, 1, Some(Duration::from_secs(10_000))).unwrap();
        assert_eq!(capped, Duration::from_secs(100));
        let shorter = next_delay(&SCHEDULE, 2, Some(Duration::from_secs(1))).unwrap();
        assert!(shorter >= Duration::from_secs(90));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
