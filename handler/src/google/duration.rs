//! `google.protobuf.Duration` as Google's REST APIs write it in JSON: `"10s"`,
//! `"1.500s"`. Read into a [`Duration`], so `"10s"` and `"10.000s"` compare
//! equal and a setting read back is not mistaken for a changed one.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration in Google's JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Seconds(pub(crate) Duration);

impl Seconds {
    pub(crate) fn from_secs(seconds: u64) -> Self {
        Self(Duration::from_secs(seconds))
    }

    /// Reads `"{seconds}[.{fraction}]s"`, the fraction of up to 9 digits.
    fn parse(text: &str) -> Option<Self> {
        let number = text.strip_suffix('s')?;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 9 {
            return None;
        }
        let nanos = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().ok()? };
        Some(Self(Duration::new(whole.parse().ok()?, nanos)))
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (seconds, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        match nanos {
            0 => write!(f, "{seconds}s"),
            _ if nanos % 1_000_000 == 0 => write!(f, "{seconds}.{:03}s", nanos / 1_000_000),
            _ if nanos % 1_000 == 0 => write!(f, "{seconds}.{:06}s", nanos / 1_000),
            _ => write!(f, "{seconds}.{nanos:09}s"),
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"1.500s\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Seconds, E> {
                Seconds::parse(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_googles_forms() {
        let read = |text: &str| serde_json::from_str::<Seconds>(&format!("\"{text}\"")).ok();
        assert_eq!(read("10s"), Some(Seconds::from_secs(10)));
        assert_eq!(read("10.000s"), Some(Seconds::from_secs(10)));
        assert_eq!(read("1.5s"), Some(Seconds(Duration::from_millis(1500))));
        assert_eq!(read("0.000000001s"), Some(Seconds(Duration::from_nanos(1))));
        for bad in ["10", "s", "-1s", "1.s5", "1.0000000001s", "ten s"] {
            assert_eq!(read(bad), None, "{bad}");
        }
        let written: Vec<String> = [Duration::from_secs(600), Duration::from_millis(1500), Duration::from_micros(1)]
            .map(|duration| Seconds(duration).to_string())
            .into();
        assert_eq!(written, ["600s", "1.500s", "0.000001s"]);
    }
}
