//! A log field's value as it may be written: at most [`MAX_VALUE_BYTES`], cut
//! at a character boundary with a note of how much was cut, and, for the text
//! format, on one line. Nothing here decides what is logged.

use std::fmt::{self, Write as _};

/// The most a value (a field or a message) takes in a log line. Cloud Logging
/// refuses entries over 256 KB, and a value can come from a client (a task
/// name, a malformed body quoted in an error) or from a panic: a line of a
/// few such values stays far under the limit, and 8 KiB is still the whole of
/// any value a person wants to read.
pub(crate) const MAX_VALUE_BYTES: usize = 8 * 1024;

/// A writer that passes on at most [`MAX_VALUE_BYTES`] and counts the rest;
/// `one_line` escapes control characters (`\n` as `\\n`, ESC as `\u{1b}`).
pub(crate) struct Capped<W> {
    inner: W,
    left: usize,
    cut: usize,
    one_line: bool,
}

impl<W: fmt::Write> Capped<W> {
    pub(crate) fn new(inner: W, one_line: bool) -> Self {
        Self { inner, left: MAX_VALUE_BYTES, cut: 0, one_line }
    }

    /// Notes the bytes cut, if any, and hands the writer back.
    pub(crate) fn finish(mut self) -> Result<W, fmt::Error> {
        if self.cut > 0 {
            write!(self.inner, "…[{} bytes cut]", self.cut)?;
        }
        Ok(self.inner)
    }
}

impl<W: fmt::Write> fmt::Write for Capped<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if self.cut > 0 {
            self.cut += text.len();
            return Ok(());
        }
        // The common case, for the JSON format always: nothing to escape, so
        // the cut (if any) falls at the last character boundary that fits.
        if !self.one_line || !text.contains(char::is_control) {
            // `str::floor_char_boundary`, which is newer than the MSRV.
            let kept = (0..=self.left.min(text.len())).rev().find(|&end| text.is_char_boundary(end)).unwrap_or(0);
            self.left -= kept;
            self.cut = text.len() - kept;
            return self.inner.write_str(&text[..kept]);
        }
        let mut plain = 0;
        for (index, character) in text.char_indices() {
            let escape = self.one_line && character.is_control();
            let width = if escape { character.escape_debug().len() } else { character.len_utf8() };
            if width > self.left {
                self.cut = text.len() - index;
                return self.inner.write_str(&text[plain..index]);
            }
            self.left -= width;
            if escape {
                self.inner.write_str(&text[plain..index])?;
                write!(self.inner, "{}", character.escape_debug())?;
                plain = index + character.len_utf8();
            }
        }
        self.inner.write_str(&text[plain..])
    }
}

/// `value`, capped, as a string of its own (for the JSON format, which escapes).
pub(crate) fn capped(value: fmt::Arguments<'_>) -> String {
    let mut capped = Capped::new(String::new(), false);
    let _ = capped.write_fmt(value);
    capped.finish().unwrap_or_default()
}

/// `value`, capped, as a string of its own: [`capped`] without formatting
/// for the common case of a string that fits.
pub(crate) fn capped_str(value: &str) -> String {
    if value.len() <= MAX_VALUE_BYTES { value.to_owned() } else { capped(format_args!("{value}")) }
}

/// Writes `value` to `writer`, capped and on one line (for the text format).
pub(crate) fn write_one_line(writer: &mut impl fmt::Write, value: fmt::Arguments<'_>) -> fmt::Result {
    let mut capped = Capped::new(writer, true);
    capped.write_fmt(value)?;
    capped.finish().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_value_is_kept_whole() {
        assert_eq!(capped(format_args!("task {}", "t-1")), "task t-1");
        assert_eq!(capped(format_args!("two\nlines")), "two\nlines", "JSON escapes newlines itself");
    }

    #[test]
    fn a_string_is_capped_alike_with_or_without_formatting() {
        for text in ["t-1".to_owned(), "x".repeat(MAX_VALUE_BYTES), format!("a{}", "é".repeat(MAX_VALUE_BYTES))] {
            assert_eq!(capped_str(&text), capped(format_args!("{text}")));
        }
        assert!(capped_str(&"x".repeat(MAX_VALUE_BYTES + 1)).ends_with("…[1 bytes cut]"));
    }

    #[test]
    fn a_long_value_is_cut_at_a_character_boundary_and_says_how_much_was_cut() {
        // 'é' is two bytes: the limit falls inside one of them.
        let long = format!("a{}", "é".repeat(MAX_VALUE_BYTES));
        let cut = capped(format_args!("{long}"));
        let (kept, note) = cut.split_once('…').unwrap();
        assert_eq!(kept.len(), MAX_VALUE_BYTES - 1, "a whole number of 'é' after the 'a'");
        assert_eq!(note, format!("[{} bytes cut]", long.len() - kept.len()));
    }

    #[test]
    fn written_in_pieces_the_cut_is_counted_across_them() {
        let piece = "x".repeat(MAX_VALUE_BYTES / 2 + 1);
        let cut = capped(format_args!("{piece}{piece}{piece}"));
        assert_eq!(cut, format!("{}…[{} bytes cut]", "x".repeat(MAX_VALUE_BYTES), 3 * piece.len() - MAX_VALUE_BYTES));
    }

    #[test]
    fn on_one_line_control_characters_are_escaped() {
        let mut line = String::new();
        write_one_line(&mut line, format_args!("panicked at x.rs:1:\nboom\r\t\u{1b}[2K done é")).unwrap();
        assert_eq!(line, "panicked at x.rs:1:\\nboom\\r\\t\\u{1b}[2K done é");
    }

    #[test]
    fn escapes_count_towards_the_limit() {
        let mut line = String::new();
        write_one_line(&mut line, format_args!("{}", "\n".repeat(MAX_VALUE_BYTES))).unwrap();
        let (kept, note) = line.split_once('…').unwrap();
        assert_eq!(kept, "\\n".repeat(MAX_VALUE_BYTES / 2));
        assert_eq!(note, format!("[{} bytes cut]", MAX_VALUE_BYTES / 2));
    }
}
