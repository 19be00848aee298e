//! JSON written the way Python's `json.dumps` writes it with its defaults:
//! `", "` and `": "` separators, everything outside printable ASCII escaped as `\uXXXX`,
//! and floats as Python's `repr`. This makes a published message byte-for-byte
//! what the reference's Python backend publishes (modulo key order).

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::Formatter;

/// Serialises `value` as Python's `json.dumps(value)` would.
pub(crate) fn to_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(128);
    value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter))?;
    // Only ASCII is ever written.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        write_ascii_escaped(writer, fragment)
    }

    fn write_f32<W: ?Sized + Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        // Python has only doubles: an f32 reaches it widened.
        writer.write_all(python_float_repr(f64::from(value)).as_bytes())
    }

    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }
}

/// `json.dumps` escapes everything outside printable ASCII; serde_json has
/// already escaped the control characters, quote and backslash.
fn needs_unicode_escape(c: char) -> bool {
    !c.is_ascii() || c == '\x7f'
}

fn write_ascii_escaped<W: ?Sized + Write>(writer: &mut W, text: &str) -> io::Result<()> {
    let mut rest = text;
    while let Some(at) = rest.find(needs_unicode_escape) {
        writer.write_all(&rest.as_bytes()[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        for unit in c.encode_utf16(&mut [0; 2]) {
            write!(writer, "\\u{unit:04x}")?;
        }
        rest = &rest[at + c.len_utf8()..];
    }
    writer.write_all(rest.as_bytes())
}

/// Python's `repr(float)`: the shortest digits that round-trip (Rust finds the
/// same ones), in fixed notation when the decimal exponent is in -4..16 and in
/// scientific notation with a signed two-digit exponent otherwise.
fn python_float_repr(value: f64) -> String {
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(unsigned) => ("-", unsigned),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !(-4..16).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}{rest}e{exponent_sign}{:02}", exponent.abs());
    }
    // The decimal point goes after `point` digits.
    let point = exponent + 1;
    let fixed = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if (point as usize) < digits.len() {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{whole}.{fraction}")
    } else {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    };
    format!("{sign}{fixed}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn floats_match_python_repr() {
        // Each right-hand side is what CPython 3.11 prints for repr(left).
        let cases: [(f64, &str); 22] = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000123, "0.000123"),
            (0.0000123, "1.23e-05"),
            (123456789.0, "123456789.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1.2345e20, "1.2345e+20"),
            (1e100, "1e+100"),
            (1e-100, "1e-100"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (1.0 / 3.0, "0.3333333333333333"),
            (9007199254740993.0, "9007199254740992.0"),
            (123.456, "123.456"),
        ];
        for (value, python) in cases {
            assert_eq!(python_float_repr(value), python, "{value:e}");
        }
    }

    #[test]
    fn documents_match_json_dumps() {
        // python3 -c 'import json; print(json.dumps({"a": [1, 1.5, 1e16, "é😀\n\"/"], "b": {}, "c": None, "d": True}))'
        let value = json!({"a": [1, 1.5, 1e16, "é😀\n\"/"], "b": {}, "c": null, "d": true});
        assert_eq!(
            to_string(&value).unwrap(),
            r#"{"a": [1, 1.5, 1e+16, "\u00e9\ud83d\ude00\n\"/"], "b": {}, "c": null, "d": true}"#
        );
    }

    #[test]
    fn control_and_delete_characters_match_json_dumps() {
        // python3 -c 'import json; print(json.dumps("\x00\x1f\x7f\t"))'
        assert_eq!(to_string("\u{0}\u{1f}\u{7f}\t").unwrap(), r#""\u0000\u001f\u007f\t""#);
    }

    proptest! {
        #[test]
        fn float_repr_reads_back_as_the_same_float(bits in any::<u64>()) {
            let value = f64::from_bits(bits);
            prop_assume!(value.is_finite());
            let text = python_float_repr(value);
            prop_assert_eq!(text.parse::<f64>().unwrap().to_bits(), value.to_bits(), "{}", text);
            prop_assert!(text.contains('.') || text.contains('e'), "{}", text);
        }
    }
}
