//! The policy language: what one limit says, parsed from text like slowapi's.
//!
//! - `60/minute`, `1000/day`, `10 per second`, `5/10s`: requests in a period.
//! - `100000 tokens/day`: tokens (in + out, as plugins report them) in a period.
//! - `3600 compute-seconds/day`: model compute time the host measured, in a period.
//! - `8 concurrent`: requests in flight at once.
//!
//! Periods: an optional count and a unit (`s`/`second`, `m`/`min`/`minute`, `h`/`hour`,
//! `d`/`day`, plurals accepted).

use std::fmt;
use std::time::Duration;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metered {
    Requests,
    Tokens,
    ComputeSeconds,
}

impl Metered {
    pub fn as_str(self) -> &'static str {
        match self {
            Metered::Requests => "requests",
            Metered::Tokens => "tokens",
            Metered::ComputeSeconds => "compute-seconds",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// At most `amount` of `metered` in any `period` (GCRA: a steady rate with a burst of
    /// `amount`).
    Rate {
        metered: Metered,
        amount: f64,
        period: Duration,
    },
    /// At most this many requests in flight.
    Concurrent(u32),
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Rate {
                metered,
                amount,
                period,
            } => {
                let unit = match metered {
                    Metered::Requests => String::new(),
                    m => format!(" {}", m.as_str()),
                };
                write!(f, "{amount}{unit}/{}s", period.as_secs())
            }
            Policy::Concurrent(n) => write!(f, "{n} concurrent"),
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(text: &str) -> Result<Policy, String> {
        parse(text).map_err(|why| format!("limit `{text}`: {why}"))
    }
}

fn parse(text: &str) -> Result<Policy, String> {
    let text = text.trim().to_ascii_lowercase();
    if let Some(n) = text.strip_suffix("concurrent") {
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| "expected `N concurrent` with a whole number N".to_string())?;
        if n == 0 {
            return Err("a concurrency limit must be at least 1".into());
        }
        return Ok(Policy::Concurrent(n));
    }
    let (amount, period) = text
        .split_once('/')
        .or_else(|| text.split_once(" per "))
        .ok_or("expected `AMOUNT/PERIOD` (e.g. `60/minute`) or `N concurrent`")?;
    let mut words = amount.split_whitespace();
    let number = words.next().ok_or("the amount is missing")?;
    let amount: f64 = number
        .parse()
        .map_err(|_| format!("`{number}` is not a number"))?;
    if !(amount.is_finite() && amount > 0.0) {
        return Err("the amount must be above zero".into());
    }
    let metered = match words.next() {
        None | Some("request" | "requests") => Metered::Requests,
        Some("token" | "tokens") => Metered::Tokens,
        Some("compute-second" | "compute-seconds") => Metered::ComputeSeconds,
        Some(other) => {
            return Err(format!(
                "unknown unit `{other}` (use requests, tokens or compute-seconds)"
            ));
        }
    };
    if words.next().is_some() {
        return Err("expected one number and at most one unit before `/`".into());
    }
    if metered == Metered::Requests && amount.fract() != 0.0 {
        return Err("a request count must be a whole number".into());
    }
    Ok(Policy::Rate {
        metered,
        amount,
        period: parse_period(period.trim())?,
    })
}

fn parse_period(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (count, unit) = text.split_at(split);
    let count: f64 = if count.is_empty() {
        1.0
    } else {
        count
            .parse()
            .map_err(|_| format!("`{count}` is not a number"))?
    };
    let seconds = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        "" => return Err("the period needs a unit (second, minute, hour or day)".into()),
        other => {
            return Err(format!(
                "unknown period unit `{other}` (use second, minute, hour or day)"
            ));
        }
    };
    let total = count * seconds;
    if !(total.is_finite() && total >= 0.001) {
        return Err("the period must be at least a millisecond".into());
    }
    if total > 366.0 * 86400.0 {
        return Err("the period must be at most a year".into());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(metered: Metered, amount: f64, secs: u64) -> Policy {
        Policy::Rate {
            metered,
            amount,
            period: Duration::from_secs(secs),
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        use Metered::*;
        for (text, want) in [
            ("60/minute", rate(Requests, 60.0, 60)),
            ("1000/day", rate(Requests, 1000.0, 86400)),
            ("10 per second", rate(Requests, 10.0, 1)),
            ("5/10s", rate(Requests, 5.0, 10)),
            ("5 / 2 seconds", rate(Requests, 5.0, 2)),
            ("100/5minutes", rate(Requests, 100.0, 300)),
            ("1 request/h", rate(Requests, 1.0, 3600)),
            ("100000 tokens/day", rate(Tokens, 100000.0, 86400)),
            (
                "3600 compute-seconds/day",
                rate(ComputeSeconds, 3600.0, 86400),
            ),
            ("0.5 compute-seconds/minute", rate(ComputeSeconds, 0.5, 60)),
            ("8 concurrent", Policy::Concurrent(8)),
            (" 60/MINUTE ", rate(Requests, 60.0, 60)),
        ] {
            assert_eq!(text.parse::<Policy>().unwrap(), want, "{text}");
        }
    }

    #[test]
    fn refuses_nonsense_with_a_reason() {
        for (text, why) in [
            ("60", "expected `AMOUNT/PERIOD`"),
            ("x/minute", "is not a number"),
            ("0/minute", "above zero"),
            ("-1/minute", "above zero"),
            ("1.5/minute", "whole number"),
            ("60/fortnight", "unknown period unit `fortnight`"),
            ("60/", "needs a unit"),
            ("5 apples/day", "unknown unit `apples`"),
            ("0 concurrent", "at least 1"),
            ("many concurrent", "whole number"),
            ("1/0s", "at least a millisecond"),
            ("1/1000days", "at most a year"),
        ] {
            let err = text.parse::<Policy>().unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
