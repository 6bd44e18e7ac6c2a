//! `GET /containers/{id}/logs` decoded (SPEC §13 `logs`): the engine's
//! multiplexed stream (8-byte frame headers: stream, 3 zero bytes, length)
//! for containers without a TTY, the raw byte stream for TTY ones; lines with
//! the engine's timestamps (`timestamps=1`). What comes out is bounded: at
//! most `MAX_TEXT` bytes of text in all, each line cut at `MAX_LINE`; binary
//! output is shown lossily as UTF-8; a stream cut half-way keeps the lines
//! read so far and says `truncated`.

use serde::Serialize;

/// Text in one result, all lines together (SPEC §13: 64 KiB).
pub const MAX_TEXT: usize = 64 << 10;
/// One line's text; longer lines are cut (and the result `truncated`).
pub const MAX_LINE: usize = 8 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// `stdout` or `stderr` (`stdout` for TTY containers, which have one stream).
    pub stream: &'static str,
    /// RFC 3339 with nanoseconds, as the engine stamped it (`null` if it did not).
    pub time: Option<String>,
    pub text: String,
}

/// Decoded lines, newest last, and whether anything was left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Logs {
    pub lines: Vec<LogLine>,
    pub truncated: bool,
}

/// Decodes `body`; `tty`: the container's `Config.Tty` (raw stream).
/// The tail is kept when the text is over `MAX_TEXT` (the newest lines matter).
pub fn decode(body: &[u8], tty: bool) -> Logs {
    let mut out = Logs::default();
    let mut pieces: Vec<(&'static str, &[u8])> = Vec::new();
    if tty {
        pieces.push(("stdout", body));
    } else {
        let mut rest = body;
        while !rest.is_empty() {
            if rest.len() < 8 {
                out.truncated = true;
                break;
            }
            let stream = match rest[0] {
                2 => "stderr",
                _ => "stdout",
            };
            let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            let Some(payload) = rest.get(8..8 + len) else {
                // Cut half-way: keep what is whole.
                out.truncated = true;
                pieces.push((stream, &rest[8..]));
                break;
            };
            pieces.push((stream, payload));
            rest = &rest[8 + len..];
        }
    }
    // Frames need not end at line ends: join per stream in order, split at '\n'.
    let mut current: Option<(&'static str, Vec<u8>)> = None;
    let mut lines: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for (stream, bytes) in pieces {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            match &mut current {
                Some((s, buf)) if *s == stream => buf.extend_from_slice(chunk),
                _ => {
                    if let Some(done) = current.take() {
                        lines.push(done);
                    }
                    current = Some((stream, chunk.to_vec()));
                }
            }
            if chunk.ends_with(b"\n")
                && let Some(done) = current.take()
            {
                lines.push(done);
            }
        }
    }
    if let Some(done) = current.take() {
        lines.push(done);
    }
    let mut decoded: Vec<LogLine> = lines
        .into_iter()
        .map(|(stream, raw)| {
            let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text = String::from_utf8_lossy(raw);
            let (time, text) = split_time(&text);
            let mut text = text.to_string();
            if text.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
                out.truncated = true;
            }
            LogLine { stream, time, text }
        })
        .collect();
    // The newest lines that fit.
    let mut total = 0;
    let mut keep = decoded.len();
    for l in decoded.iter().rev() {
        if total + l.text.len() > MAX_TEXT {
            out.truncated = true;
            break;
        }
        total += l.text.len();
        keep -= 1;
    }
    out.lines = decoded.split_off(keep);
    out
}

/// `2026-12-01T10:00:00.123456789Z text` → (time, text).
fn split_time(line: &str) -> (Option<String>, &str) {
    match line.split_once(' ') {
        Some((t, rest)) if t.len() >= 20 && t.as_bytes()[4] == b'-' && t.ends_with('Z') => {
            (Some(t.to_string()), rest)
        }
        _ => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![stream, 0, 0, 0];
        v.extend((payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn multiplexed_frames_become_lines_per_stream() {
        let mut body = frame(
            1,
            b"2026-12-01T10:00:00.000000001Z hello\n2026-12-01T10:00:00.000000002Z wor",
        );
        body.extend(frame(1, b"ld\n"));
        body.extend(frame(2, b"2026-12-01T10:00:00.000000003Z oops\n"));
        let l = decode(&body, false);
        assert!(!l.truncated);
        let got: Vec<(&str, &str, Option<&str>)> = l
            .lines
            .iter()
            .map(|x| (x.stream, x.text.as_str(), x.time.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("stdout", "hello", Some("2026-12-01T10:00:00.000000001Z")),
                ("stdout", "world", Some("2026-12-01T10:00:00.000000002Z")),
                ("stderr", "oops", Some("2026-12-01T10:00:00.000000003Z")),
            ]
        );
    }

    #[test]
    fn tty_is_raw_and_binary_is_lossy() {
        let l = decode(
            b"2026-12-01T10:00:00Z a\r\nno time here\n\xff\xfe bin\n",
            true,
        );
        assert_eq!(l.lines.len(), 3);
        assert_eq!(l.lines[0].text, "a");
        assert_eq!(l.lines[1].time, None);
        assert!(l.lines[2].text.contains('\u{fffd}'));
        assert!(l.lines.iter().all(|x| x.stream == "stdout"));
    }

    #[test]
    fn bounded_and_cut_streams_say_truncated() {
        // A frame header promising more than arrived.
        let mut body = frame(1, b"whole\n");
        body.extend([1, 0, 0, 0, 0, 0, 1, 0]);
        body.extend(b"par");
        let l = decode(&body, false);
        assert!(l.truncated);
        assert_eq!(l.lines[0].text, "whole");
        // A huge line is cut; many lines keep the newest that fit in 64 KiB.
        let huge = "x".repeat(100_000) + "\n";
        let l = decode(huge.as_bytes(), true);
        assert!(l.truncated && l.lines[0].text.len() <= MAX_LINE + 3);
        let many: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let l = decode(many.as_bytes(), true);
        assert!(l.truncated);
        assert_eq!(l.lines.last().map(|x| x.text.as_str()), Some("line 19999"));
        assert!(l.lines.iter().map(|x| x.text.len()).sum::<usize>() <= MAX_TEXT);
        assert!(decode(b"", false).lines.is_empty());
    }
}
