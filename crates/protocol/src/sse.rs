//! Incremental Server-Sent Events decoding and encoding (the subset LLM APIs use).
//!
//! The decoder accepts bytes in arbitrary pieces (a network read may split a line, or a UTF-8
//! character, anywhere) and yields complete events. It follows the WHATWG rules that matter here:
//! `\n`, `\r\n` and `\r` line endings, `data:` lines joined with `\n`, an optional space after the
//! colon, comment lines starting with `:`, and an event dispatched on a blank line.

use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the server sent one.
    pub event: Option<String>,
    pub data: String,
}

/// Most an event may grow to before the decoder reports an error instead of buffering forever.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event larger than {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug)]
pub struct SseDecoder {
    buf: BytesMut,
    event: Option<String>,
    data: String,
    has_data: bool,
    max_event_bytes: usize,
    /// The previous chunk ended in `\r`: a `\n` at the start of the next one belongs to it.
    pending_cr: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    pub fn new(max_event_bytes: usize) -> Self {
        SseDecoder {
            buf: BytesMut::new(),
            event: None,
            data: String::new(),
            has_data: false,
            max_event_bytes,
            pending_cr: false,
        }
    }

    /// Feeds bytes and appends every event they complete to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut chunk = chunk;
        // An empty read must not forget a pending `\r`: the `\n` may still follow in the next one.
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        self.buf.extend_from_slice(chunk);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line = self.buf.split_to(pos);
            let term = self.buf.split_to(1);
            if term[0] == b'\r' {
                if self.buf.first() == Some(&b'\n') {
                    let _ = self.buf.split_to(1);
                } else if self.buf.is_empty() {
                    self.pending_cr = true;
                }
            }
            self.line(&line, out);
        }
        if self.buf.len() + self.data.len() > self.max_event_bytes {
            self.buf.clear();
            self.data.clear();
            self.has_data = false;
            return Err(SseError::TooLarge(self.max_event_bytes));
        }
        Ok(())
    }

    /// Call at end of stream: dispatches an event that was not followed by a blank line.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line, out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = Some(value.into_owned()),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        self.event = None;
        self.has_data = false;
    }
}

/// Encodes one `data:` event. `data` must not contain newlines (JSON from serde never does).
pub fn encode_data(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(data);
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

/// Encodes a named event (Anthropic style).
pub fn encode_event(event: &str, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + event.len() + 16);
    b.extend_from_slice(b"event: ");
    b.extend_from_slice(event.as_bytes());
    b.extend_from_slice(b"\ndata: ");
    b.extend_from_slice(data);
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p, &mut out).unwrap();
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn basic_and_named_events() {
        let ev = decode_all(&[b"event: ping\ndata: {}\n\ndata: a\ndata: b\n\n: comment\ndata:x\n\n"]);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].event.as_deref(), Some("ping"));
        assert_eq!(ev[1].data, "a\nb");
        assert_eq!(ev[1].event, None);
        assert_eq!(ev[2].data, "x");
    }

    #[test]
    fn split_anywhere_and_crlf() {
        let whole: &[u8] = b"data: hello\r\n\r\ndata: w\xc3\xb6rld\r\rdata: [DONE]\n\n";
        let expected = decode_all(&[whole]);
        assert_eq!(expected.len(), 3);
        assert_eq!(expected[1].data, "wörld");
        for i in 0..whole.len() {
            for j in i..whole.len() {
                let got = decode_all(&[&whole[..i], &whole[i..j], &whole[j..]]);
                assert_eq!(got, expected, "split at {i},{j}");
                // Empty reads in between change nothing.
                let got = decode_all(&[&whole[..i], b"", &whole[i..j], b"", &whole[j..]]);
                assert_eq!(got, expected, "split at {i},{j} with empty reads");
            }
        }
    }

    #[test]
    fn crlf_split_by_an_empty_read_is_one_line_ending() {
        let ev = decode_all(&[b"data: a\r", b"", b"\ndata: b\n\n"]);
        assert_eq!(
            ev,
            vec![SseEvent {
                event: None,
                data: "a\nb".into()
            }]
        );
    }

    #[test]
    fn unterminated_final_event_is_dispatched_on_finish() {
        let ev = decode_all(&[b"data: tail"]);
        assert_eq!(
            ev,
            vec![SseEvent {
                event: None,
                data: "tail".into()
            }]
        );
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut d = SseDecoder::new(16);
        let mut out = Vec::new();
        assert!(d.feed(b"data: 0123456789abcdefghij", &mut out).is_err());
    }

    #[test]
    fn encode_round_trip() {
        let mut bytes = encode_data(br#"{"a":1}"#).to_vec();
        bytes.extend_from_slice(&encode_event("message_stop", b"{}"));
        bytes.extend_from_slice(DONE);
        let ev = decode_all(&[&bytes]);
        assert_eq!(ev[0].data, r#"{"a":1}"#);
        assert_eq!(ev[1].event.as_deref(), Some("message_stop"));
        assert_eq!(ev[2].data, "[DONE]");
    }
}
