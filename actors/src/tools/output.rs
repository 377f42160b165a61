//! Capped capture of what a tool produces. Output is kept up to the cap and read-and-dropped
//! beyond it while still being counted, so that a program printing 100 MB neither fills the
//! node's memory nor blocks forever on a full pipe, and the step still reports how much it
//! printed. Text is lossy UTF-8 and never longer than the cap.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes kept up to a cap, plus a count of everything offered.
#[derive(Debug)]
pub(crate) struct Capped {
    buf: Vec<u8>,
    cap: usize,
    bytes: u64,
}

impl Capped {
    pub(crate) fn new(cap: usize) -> Self {
        Capped {
            buf: Vec::new(),
            cap,
            bytes: 0,
        }
    }

    /// Keeps what fits under the cap and counts all of `chunk`.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&chunk[..room.min(chunk.len())]);
        self.bytes += chunk.len() as u64;
    }

    /// Whether the kept bytes are fewer than the whole.
    pub(crate) fn truncated(&self) -> bool {
        self.bytes > self.buf.len() as u64
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The kept bytes as text of at most `cap` bytes.
    pub(crate) fn text(&self) -> String {
        lossy_text(&self.buf, self.cap, self.truncated())
    }
}

impl Capped {
    /// The kept bytes as text, without a copy when they are whole UTF-8.
    pub(crate) fn into_text(self) -> String {
        if self.truncated() {
            return self.text();
        }
        String::from_utf8(self.buf).unwrap_or_else(|e| lossy_text(e.as_bytes(), self.cap, false))
    }
}

/// `template` with every `{{name}}` that `lookup` knows replaced, kept up to `cap` bytes
/// and counted beyond it. One pass: what is put in is not scanned again, and a short
/// template repeating a long value cannot make the node allocate more than the cap.
pub(crate) fn render<'v>(
    template: &str,
    cap: usize,
    lookup: impl Fn(&str) -> Option<std::borrow::Cow<'v, str>>,
) -> Capped {
    let mut out = Capped::new(cap);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let value = after
            .find("}}")
            .and_then(|close| Some((close, lookup(&after[..close])?)));
        match value {
            Some((close, value)) => {
                out.push(&rest.as_bytes()[..open]);
                out.push(value.as_bytes());
                rest = &after[close + 2..];
            }
            None => {
                // Not a known name: keep the first brace and look again from the next.
                out.push(&rest.as_bytes()[..open + 1]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push(rest.as_bytes());
    out
}

/// Reads `reader` to its end, keeping at most `cap` bytes.
pub(crate) async fn read_capped<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
) -> std::io::Result<Capped> {
    let mut capped = Capped::new(cap);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(capped);
        }
        capped.push(&chunk[..n]);
    }
}

/// `bytes` as lossy UTF-8 of at most `cap` bytes. When the bytes were cut off at the cap, a
/// character split by the cut is dropped rather than shown as a replacement character.
pub(crate) fn lossy_text(bytes: &[u8], cap: usize, truncated: bool) -> String {
    let bytes = if truncated {
        &bytes[..complete_prefix(bytes)]
    } else {
        bytes
    };
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if text.len() > cap {
        // Replacement characters (3 bytes) can make the text longer than the bytes were.
        let mut end = cap;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Length of `bytes` without a trailing, incomplete UTF-8 sequence.
fn complete_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead byte
        }
        let needed = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return len,
        };
        return if back < needed { len - back } else { len };
    }
    len
}

/// `text` as JSON when it is one whole JSON document and was not cut off.
pub(crate) fn parse_json(text: &str, truncated: bool) -> Option<serde_json::Value> {
    if truncated || text.trim().is_empty() {
        return None;
    }
    serde_json::from_str(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_counts_everything_and_keeps_the_cap() {
        let mut c = Capped::new(4);
        c.push(b"abc");
        c.push(b"defgh");
        assert_eq!(c.bytes(), 8);
        assert!(c.truncated());
        assert_eq!(c.text(), "abcd");
    }

    #[test]
    fn split_character_is_dropped_and_text_stays_under_cap() {
        // "é" is two bytes; a cap of 2 after "a" splits it.
        let mut c = Capped::new(2);
        c.push("aé".as_bytes());
        assert_eq!(c.text(), "a");
        assert_eq!(lossy_text(&[0xFF, 0xFF], 2, false).len(), 0);
        assert_eq!(lossy_text(&[0xFF, 0xFF, 0xFF], 3, false), "\u{FFFD}");
    }

    #[test]
    fn render_replaces_known_names_once_and_keeps_the_cap() {
        use std::borrow::Cow;
        let known = |name: &str| match name {
            "input" => Some(Cow::Borrowed("{{x}}")),
            "x" => Some(Cow::Borrowed("X")),
            _ => None,
        };
        let out = render("a {{input}} {{x}} {{y}} {{{x}}} {{x", 100, known);
        assert_eq!(out.into_text(), "a {{x}} X {{y}} {X} {{x");
        // A million copies of a long value are counted, not kept.
        let template = "{{v}}".repeat(1_000_000);
        let long = "z".repeat(1 << 20);
        let out = render(&template, 10, |_| Some(Cow::Borrowed(long.as_str())));
        assert!(out.truncated());
        assert_eq!(out.bytes(), 1_000_000 << 20);
        assert_eq!(out.into_text(), "z".repeat(10));
    }

    #[test]
    fn json_only_when_whole() {
        assert_eq!(
            parse_json("{\"a\":1}\n", false),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(parse_json("{\"a\":1}", true), None);
        assert_eq!(parse_json("hello", false), None);
    }
}
