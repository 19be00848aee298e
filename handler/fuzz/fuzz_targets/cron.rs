//! The cron parser and fire times: the first byte picks a timezone (every
//! IANA name chrono-tz knows), the next eight a start time, the rest is the
//! expression. The first fire times must be strictly increasing and after
//! the start.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use whirligig_registry::{Schedule, Tz, parse_timezone};

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let zones = chrono_tz_names();
    let zone = zones[usize::from(u16::from_le_bytes([data[0], data[1]])) % zones.len()];
    let timezone: Tz = parse_timezone(zone).expect("chrono-tz's own names parse");
    let seconds = i64::from_le_bytes(data[2..10].try_into().expect("8 bytes"));
    // 1970..2200: the range a scheduler job lives in.
    let start = DateTime::<Utc>::from_timestamp(seconds.rem_euclid(7_258_118_400), 0).expect("in range");
    let Ok(expression) = std::str::from_utf8(&data[10..]) else { return };
    let Ok(schedule) = Schedule::parse(expression) else { return };
    let again = Schedule::parse(schedule.expression()).expect("an accepted expression parses again");
    assert_eq!(again.expression(), schedule.expression());
    let mut last = start;
    for fire in schedule.fire_times_after(start, timezone).take(4) {
        let fire = fire.with_timezone(&Utc);
        assert!(fire > last, "{expression:?} in {zone}: {fire} is not after {last}");
        last = fire;
    }
    // An arbitrary name, too.
    let _ = parse_timezone(expression);
});

fn chrono_tz_names() -> &'static [&'static str] {
    use std::sync::OnceLock;
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect())
}
