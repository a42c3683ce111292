//! Cutting bytes read from a file into line records.
//!
//! Only complete lines (ended by `\n`) are cut: the last, unended line of
//! a file may still be being written, so it waits for its newline. A
//! `\r` before the `\n` is dropped; blank lines are skipped silently (they
//! are neither records nor errors).

use super::config::LineFormat;

/// What [`cut_lines`] found in a window of bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LineCut {
    /// Each record's byte offset in the file and its bytes.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Malformed lines left out: their byte offset and why.
    pub skipped: Vec<(u64, String)>,
    /// Bytes of the window consumed (complete lines only).
    pub consumed: usize,
    /// An unended line starts here and is already longer than the limit.
    pub too_long: Option<u64>,
}

/// Cuts `bytes` (read at file offset `base`) into at most `max` records.
/// Stops right after the `max`-th record, so a read of the same bytes with
/// `max` = the records it returned ends at the same place.
pub fn cut_lines(bytes: &[u8], base: u64, format: LineFormat, max: usize, max_line: usize) -> LineCut {
    let mut cut = LineCut::default();
    let mut at = 0usize;
    while cut.records.len() < max {
        let Some(nl) = bytes[at..].iter().position(|&b| b == b'\n') else {
            if bytes.len() - at > max_line {
                cut.too_long = Some(base + at as u64);
            }
            break;
        };
        let mut line = &bytes[at..at + nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let offset = base + at as u64;
        at += nl + 1;
        cut.consumed = at;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.len() > max_line {
            cut.too_long = Some(offset);
            cut.consumed = (offset - base) as usize;
            break;
        }
        if format == LineFormat::Json
            && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line)
        {
            cut.skipped.push((offset, format!("not JSON: {e}")));
            continue;
        }
        cut.records.push((offset, line.to_vec()));
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_are_cut() {
        let c = cut_lines(b"a\r\nbb\n\n  \ncc", 100, LineFormat::Lines, 10, 64);
        assert_eq!(c.records, vec![(100, b"a".to_vec()), (103, b"bb".to_vec())]);
        assert_eq!(c.consumed, 10, "blank lines are consumed, the unended one is not");
        assert_eq!(c.too_long, None);
    }

    #[test]
    fn malformed_json_is_skipped_with_its_offset() {
        let c = cut_lines(b"{\"a\":1}\n{oops\n[2]\n", 0, LineFormat::Json, 10, 64);
        assert_eq!(c.records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 14]);
        assert_eq!(c.skipped.len(), 1);
        assert_eq!(c.skipped[0].0, 8);
        assert!(c.skipped[0].1.starts_with("not JSON"), "{:?}", c.skipped);
    }

    #[test]
    fn stops_right_after_max_records() {
        let c = cut_lines(b"1\nx\n2\n", 0, LineFormat::Json, 1, 64);
        assert_eq!((c.records.len(), c.consumed), (1, 2));
        let again = cut_lines(b"1\nx\n2\n", 0, LineFormat::Json, 5, 64);
        assert_eq!((again.records.len(), again.consumed, again.skipped.len()), (2, 6, 1));
    }

    #[test]
    fn a_line_over_the_limit_is_reported_where_it_starts() {
        let c = cut_lines(b"ok\n0123456789\n", 0, LineFormat::Lines, 10, 5);
        assert_eq!((c.records.len(), c.consumed, c.too_long), (1, 3, Some(3)));
        let unended = cut_lines(b"ok\n0123456789", 0, LineFormat::Lines, 10, 5);
        assert_eq!(unended.too_long, Some(3));
        let waiting = cut_lines(b"ok\n0123", 0, LineFormat::Lines, 10, 5);
        assert_eq!(waiting.too_long, None);
    }
}
