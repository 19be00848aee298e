//! Cron schedules as Cloud Scheduler reads them (unix-cron: five fields of
//! `*`, numbers, ranges, lists and steps; month and weekday names; 7 as
//! Sunday), and their fire times in an IANA time zone. The syntax is checked
//! here, field by field, so an expression Cloud Scheduler would refuse never
//! reaches provisioning; the calendar arithmetic and daylight-saving rules are
//! croner's.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed five-field cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expression: String,
    cron: Cron,
}

impl Schedule {
    /// Parses `expression`, naming the field and the token at fault when it is invalid.
    pub fn parse(expression: &str) -> Result<Self, ScheduleError> {
        check_syntax(expression)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| ScheduleError::new(None, error.to_string()))?;
        let schedule = Self { expression: expression.split_whitespace().collect::<Vec<_>>().join(" "), cron };
        schedule.ensure_it_fires()?;
        Ok(schedule)
    }

    /// The expression, with runs of whitespace collapsed to one space.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Fire times strictly after `after`, in `timezone`, in order.
    ///
    /// Daylight saving follows Vixie cron: a wall time skipped by a
    /// spring-forward fires once, at the first instant after the gap; a wall
    /// time repeated by a fall-back fires once, at its first occurrence, unless
    /// the hour field is a wildcard or a step, which fires in both.
    pub fn fire_times_after(&self, after: DateTime<Utc>, timezone: Tz) -> impl Iterator<Item = DateTime<Tz>> {
        self.cron.iter_after(after.with_timezone(&timezone))
    }

    /// An expression may parse and still name no real day (`0 0 30 2 *`);
    /// Cloud Scheduler would accept it and never run the task.
    fn ensure_it_fires(&self) -> Result<(), ScheduleError> {
        let start = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single().unwrap_or_default();
        match self.cron.find_next_occurrence(&start, false) {
            Ok(_) => Ok(()),
            Err(_) => Err(ScheduleError::new(None, "never fires: no date matches the day-of-month and month")),
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(expression: &str) -> Result<Self, Self::Err> {
        Self::parse(expression)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// Parses an IANA time zone name (`Europe/London`, `UTC`) against the tz
/// database compiled into chrono-tz.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>().map_err(|_| {
        ScheduleError::new(None, format!("unknown time zone {name:?}; use an IANA name such as Europe/London"))
    })
}

/// Why a schedule or time zone is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", field.map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ScheduleError {
    field: Option<&'static str>,
    reason: String,
}

impl ScheduleError {
    fn new(field: Option<&'static str>, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }

    /// The cron field at fault (`minute`, `hour`, `day-of-month`, `month`,
    /// `day-of-week`), when the problem lies in one.
    pub fn field(&self) -> Option<&'static str> {
        self.field
    }
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[] },
    Field { name: "hour", min: 0, max: 23, names: &[] },
    Field { name: "day-of-month", min: 1, max: 31, names: &[] },
    Field { name: "month", min: 1, max: 12, names: &MONTHS },
    // 7 is Sunday as well as 0, as Cloud Scheduler accepts.
    Field { name: "day-of-week", min: 0, max: 7, names: &WEEKDAYS },
];

fn check_syntax(expression: &str) -> Result<(), ScheduleError> {
    let parts: Vec<&str> = expression.split_whitespace().collect();
    if parts.len() != FIELDS.len() {
        return Err(ScheduleError::new(
            None,
            format!("expected 5 fields (minute hour day-of-month month day-of-week), found {}", parts.len()),
        ));
    }
    for (field, text) in FIELDS.iter().zip(parts) {
        text.split(',')
            .try_for_each(|item| field.check_item(item))
            .map_err(|reason| ScheduleError::new(Some(field.name), reason))?;
    }
    Ok(())
}

impl Field {
    /// One list item: `*`, `N`, `N-M`, `*/S` or `N-M/S`.
    fn check_item(&self, item: &str) -> Result<(), String> {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            let step = parse_number(step).ok_or_else(|| format!("step {step:?} is not a positive number"))?;
            if step == 0 {
                return Err("a step of 0 never advances".to_owned());
            }
            if !(base == "*" || base.contains('-')) {
                return Err(format!("{item:?}: a step needs `*` or a range before it"));
            }
        }
        if base == "*" {
            return Ok(());
        }
        let (low, high) = base.split_once('-').unwrap_or((base, base));
        let (low, high) = (self.value(low)?, self.value(high)?);
        if low > high {
            return Err(format!("range {base:?} runs backwards"));
        }
        Ok(())
    }

    fn value(&self, token: &str) -> Result<u32, String> {
        let value = match self.names.iter().position(|name| *name == token) {
            Some(index) => Some(index as u32 + self.min),
            None => parse_number(token),
        };
        match value {
            Some(value) if (self.min..=self.max).contains(&value) => Ok(value),
            Some(value) => Err(format!("{value} is out of range {}-{}", self.min, self.max)),
            None if token.is_empty() => Err("empty value".to_owned()),
            None => Err(format!("{token:?} is not a number{}", self.name_hint())),
        }
    }

    fn name_hint(&self) -> String {
        match self.names {
            [] => String::new(),
            names => format!(" or one of {}", names.join(" ")),
        }
    }
}

/// Digits only: `u32::from_str` would also take a leading `+`.
fn parse_number(token: &str) -> Option<u32> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn fires(expression: &str, tz: &str, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let schedule = Schedule::parse(expression).unwrap();
        schedule.fire_times_after(after, parse_timezone(tz).unwrap()).take(n).map(|t| t.with_timezone(&Utc)).collect()
    }

    fn field_of(expression: &str) -> Option<&'static str> {
        Schedule::parse(expression).unwrap_err().field()
    }

    #[test]
    fn accepts_the_reference_examples_and_every_syntax_form() {
        for expression in [
            "*/10 * * * *",
            "0 * * * *",
            "0 3 * * *",
            "0 9 * * 1",
            "0 0 1 * *",
            "5,10-20/5 */2 1-15 JAN,6-8 MON-FRI",
            "0-59/15 0-23 1-31 1-12 0-7",
            "0 0 * * 7",
            "0   12  *  * SUN",
            "*/90 */30 */40 */13 */8",
        ] {
            assert!(Schedule::parse(expression).is_ok(), "{expression}");
        }
        assert_eq!(Schedule::parse("0   12  *  * SUN").unwrap().expression(), "0 12 * * SUN");
    }

    #[test]
    fn rejects_a_bad_value_in_each_field() {
        assert_eq!(field_of("60 * * * *"), Some("minute"));
        assert_eq!(field_of("* 24 * * *"), Some("hour"));
        assert_eq!(field_of("* * 0 * *"), Some("day-of-month"));
        assert_eq!(field_of("* * 32 * *"), Some("day-of-month"));
        assert_eq!(field_of("* * * 13 *"), Some("month"));
        assert_eq!(field_of("* * * 0 *"), Some("month"));
        assert_eq!(field_of("* * * * 8"), Some("day-of-week"));
        assert_eq!(field_of("* * * * FUNDAY"), Some("day-of-week"));
    }

    #[test]
    fn rejects_malformed_items() {
        for (expression, field) in [
            ("*/0 * * * *", "minute"),
            ("* 1/x * * *", "hour"),
            ("5/15 * * * *", "minute"),
            ("* * 10-5 * *", "day-of-month"),
            ("* * * 1- *", "month"),
            ("1,,2 * * * *", "minute"),
            ("+5 * * * *", "minute"),
            ("* * L * *", "day-of-month"),
            ("* * 15W * *", "day-of-month"),
            ("* * * * 5#2", "day-of-week"),
            ("* * ? * *", "day-of-month"),
            ("* * * jan *", "month"),
        ] {
            assert_eq!(field_of(expression), Some(field), "{expression}");
        }
    }

    #[test]
    fn rejects_the_wrong_number_of_fields_and_nicknames() {
        for expression in ["", "* * * *", "0 * * * * *", "0 0 * * * * 2030", "@daily"] {
            let error = Schedule::parse(expression).unwrap_err();
            assert_eq!(error.field(), None, "{expression}");
            assert!(error.to_string().starts_with("expected 5 fields"), "{error}");
        }
    }

    #[test]
    fn rejects_a_schedule_that_never_fires() {
        let error = Schedule::parse("0 0 30 2 *").unwrap_err();
        assert!(error.to_string().contains("never fires"), "{error}");
        assert!(Schedule::parse("0 0 29 2 *").is_ok(), "leap days do come");
    }

    #[test]
    fn timezones_come_from_the_tz_database() {
        assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
        assert_eq!(parse_timezone("Europe/London").unwrap(), Tz::Europe__London);
        for bad in ["Europe/Londn", "", "utc+1", "Mars/Olympus"] {
            assert!(parse_timezone(bad).unwrap_err().to_string().contains("unknown time zone"), "{bad}");
        }
    }

    #[test]
    fn daily_fire_times_in_utc() {
        assert_eq!(
            fires("0 3 * * *", "UTC", utc(2024, 1, 15, 10, 30), 3),
            [utc(2024, 1, 16, 3, 0), utc(2024, 1, 17, 3, 0), utc(2024, 1, 18, 3, 0)]
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_combine_with_or() {
        // 2024-04-01 is a Monday; the 1st of May is a Wednesday.
        let times = fires("0 0 1 * 1", "UTC", utc(2024, 4, 28, 0, 0), 3);
        assert_eq!(times, [utc(2024, 4, 29, 0, 0), utc(2024, 5, 1, 0, 0), utc(2024, 5, 6, 0, 0)]);
    }

    #[test]
    fn seven_is_sunday_like_zero() {
        let sunday = fires("0 9 * * 0", "UTC", utc(2024, 1, 1, 0, 0), 2);
        assert_eq!(fires("0 9 * * 7", "UTC", utc(2024, 1, 1, 0, 0), 2), sunday);
        assert_eq!(sunday[0], utc(2024, 1, 7, 9, 0));
    }

    #[test]
    fn london_fires_at_nine_local_across_both_dst_changes() {
        // BST begins 2024-03-31 and ends 2024-10-27.
        let spring = fires("0 9 * * *", "Europe/London", utc(2024, 3, 30, 0, 0), 2);
        assert_eq!(spring, [utc(2024, 3, 30, 9, 0), utc(2024, 3, 31, 8, 0)]);
        let autumn = fires("0 9 * * *", "Europe/London", utc(2024, 10, 26, 0, 0), 2);
        assert_eq!(autumn, [utc(2024, 10, 26, 8, 0), utc(2024, 10, 27, 9, 0)]);
    }

    #[test]
    fn a_time_skipped_by_spring_forward_fires_once_after_the_gap() {
        // 01:30 does not exist in London on 2024-03-31 (01:00 GMT -> 02:00 BST).
        let times = fires("30 1 * * *", "Europe/London", utc(2024, 3, 30, 12, 0), 3);
        assert_eq!(times, [utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30), utc(2024, 4, 2, 0, 30)]);
    }

    #[test]
    fn a_time_repeated_by_fall_back_fires_once() {
        // 01:30 happens twice in London on 2024-10-27 (00:30 and 01:30 UTC).
        let times = fires("30 1 * * *", "Europe/London", utc(2024, 10, 26, 12, 0), 2);
        assert_eq!(times, [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]);
    }

    #[test]
    fn an_interval_schedule_runs_through_the_repeated_hour() {
        let times = fires("*/30 * * * *", "Europe/London", utc(2024, 10, 27, 0, 0), 4);
        assert_eq!(
            times,
            [utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 0), utc(2024, 10, 27, 1, 30), utc(2024, 10, 27, 2, 0)]
        );
    }
}
