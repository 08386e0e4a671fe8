//! Taking back out of an event stream the usage that tollgate asked for on the client's
//! behalf.
//!
//! To meter an OpenAI stream, ext_proc adds `stream_options.include_usage: true` to a
//! streaming request that did not ask for usage (src/usage/parse.rs). The upstream then
//! sends what the client never asked for: `"usage": null` on every chunk and one last chunk
//! with `"choices": []` and the counts, which breaks the most common client loop
//! (`chunk.choices[0]`). [`UnaskedUsage`] gives the client the stream it would have had
//! without tollgate: the usage chunk is dropped and the `usage` member removed from the
//! others, byte for byte otherwise. Metering reads the stream before this, as the upstream
//! sent it.
//!
//! Events can be split across the pieces Envoy hands over, so an incomplete event at the
//! end of a piece is held back until the rest of it arrives (or the stream ends).

use std::borrow::Cow;

/// The filter for one response stream.
#[derive(Debug, Default)]
pub struct UnaskedUsage {
    /// The start of an event whose end has not arrived yet.
    pending: Vec<u8>,
}

impl UnaskedUsage {
    /// What of this piece (and what was held back before it) goes to the client now.
    /// `None`: the piece unchanged, as it came.
    pub fn filter(&mut self, piece: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        let held = !self.pending.is_empty();
        if held {
            self.pending.extend_from_slice(piece);
        }
        let buffer: &[u8] = if held { &self.pending } else { piece };
        let complete = if end_of_stream {
            buffer.len()
        } else {
            last_boundary(buffer)
        };
        let mut out = Vec::new();
        let mut changed = false;
        let mut start = 0;
        while start < complete {
            let end = next_boundary(&buffer[start..complete]).map_or(complete, |e| start + e);
            let event = &buffer[start..end];
            match rewrite(event) {
                Some(new) => {
                    changed = true;
                    out.extend_from_slice(&new);
                }
                None => out.extend_from_slice(event),
            }
            start = end;
        }
        let tail = buffer[complete..].to_vec();
        let unchanged = !held && !changed && tail.is_empty();
        self.pending = tail;
        (!unchanged).then_some(out)
    }
}

/// Where the first event in `bytes` ends (after its blank line), if it does.
fn next_boundary(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < bytes.len() {
        let Some(after) = line_end(bytes, i) else {
            i += 1;
            continue;
        };
        if let Some(blank) = line_end(bytes, after) {
            return Some(blank);
        }
        i = after;
    }
    None
}

/// Where the last complete event in `bytes` ends; 0 when none has.
fn last_boundary(bytes: &[u8]) -> usize {
    let mut end = 0;
    while let Some(next) = next_boundary(&bytes[end..]) {
        end += next;
    }
    end
}

/// When a line terminator (`\r\n`, `\n` or `\r`) starts at `i`: the index after it. A `\r`
/// at the very end may be the first half of `\r\n` and does not count yet.
fn line_end(bytes: &[u8], i: usize) -> Option<usize> {
    match (bytes.get(i), bytes.get(i + 1)) {
        (Some(b'\r'), Some(b'\n')) => Some(i + 2),
        (Some(b'\r'), Some(_)) => Some(i + 1),
        (Some(b'\n'), _) => Some(i + 1),
        _ => None,
    }
}

/// One event as the client should see it: `None` unchanged, `Some(empty)` dropped.
fn rewrite(event: &[u8]) -> Option<Vec<u8>> {
    let (start, end) = data_payload(event)?;
    let json = &event[start..end];
    memchr::memmem::find(json, b"\"usage\"")?;
    let members = members(json)?;
    let usage = members.iter().position(|m| *m.name == *b"usage")?;
    let value = &json[members[usage].value.clone()];
    let no_choices = members
        .iter()
        .find(|m| *m.name == *b"choices")
        .is_some_and(|m| is_empty_array(&json[m.value.clone()]));
    if value != b"null" && no_choices {
        return Some(Vec::new());
    }
    let cut = removal(&members, usage);
    let mut out = Vec::with_capacity(event.len());
    out.extend_from_slice(&event[..start + cut.start]);
    out.extend_from_slice(&event[start + cut.end..]);
    Some(out)
}

/// The JSON of an event's single `data:` line, as a range of the event; `None` for events
/// with no data, several data lines, or data that is not an object.
fn data_payload(event: &[u8]) -> Option<(usize, usize)> {
    let mut found = None;
    let mut line_start = 0;
    while line_start < event.len() {
        let line_stop = (line_start..event.len())
            .find(|&i| event[i] == b'\n' || event[i] == b'\r')
            .unwrap_or(event.len());
        let line = &event[line_start..line_stop];
        if let Some(rest) = line.strip_prefix(b"data:") {
            if found.is_some() {
                return None;
            }
            let skip = usize::from(rest.first() == Some(&b' '));
            found = Some((line_start + 5 + skip, line_stop));
        }
        line_start = line_end(event, line_stop).unwrap_or(line_stop + 1);
    }
    let (start, end) = found?;
    let trimmed = event[start..end].trim_ascii();
    trimmed.starts_with(b"{").then_some((start, end))
}

fn is_empty_array(value: &[u8]) -> bool {
    value
        .strip_prefix(b"[")
        .and_then(|v| v.strip_suffix(b"]"))
        .is_some_and(|inside| inside.trim_ascii().is_empty())
}

/// A top-level member of a JSON object: its name (escapes decoded), where it starts (its
/// name's opening quote) and where its value lies.
struct Member<'a> {
    name: Cow<'a, [u8]>,
    start: usize,
    value: std::ops::Range<usize>,
}

/// The bytes to cut to remove member `i` with one of its separating commas.
fn removal(members: &[Member<'_>], i: usize) -> std::ops::Range<usize> {
    match (members.get(i + 1), i.checked_sub(1).map(|p| &members[p])) {
        // Up to the next member's name: takes the comma after it.
        (Some(next), _) => members[i].start..next.start,
        // The last one: from the end of the previous value, taking the comma before it.
        (None, Some(previous)) => previous.value.end..members[i].value.end,
        (None, None) => members[i].start..members[i].value.end,
    }
}

/// The top-level members of a complete JSON object; `None` when it is not one.
fn members(json: &[u8]) -> Option<Vec<Member<'_>>> {
    let mut s = Cursor { b: json, i: 0 };
    let mut members = Vec::new();
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        return Some(members);
    }
    loop {
        s.ws();
        let start = s.i;
        let name = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        let value_start = s.i;
        s.value()?;
        let raw = &json[name.start + 1..name.end - 1];
        let name = if raw.contains(&b'\\') {
            Cow::Owned(
                serde_json::from_slice::<String>(&json[name])
                    .ok()?
                    .into_bytes(),
            )
        } else {
            Cow::Borrowed(raw)
        };
        members.push(Member {
            name,
            start,
            value: value_start..s.i,
        });
        s.ws();
        match s.next()? {
            b',' => continue,
            b'}' => return Some(members),
            _ => return None,
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    /// A string, quotes included, as a range.
    fn string(&mut self) -> Option<std::ops::Range<usize>> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.next()? {
                b'\\' => {
                    self.next()?;
                }
                b'"' => return Some(start..self.i),
                _ => {}
            }
        }
    }

    /// Skips one value of any kind.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the client receives when the stream arrives in these pieces.
    fn through(pieces: &[&[u8]]) -> Vec<u8> {
        let mut filter = UnaskedUsage::default();
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            match filter.filter(piece, i + 1 == pieces.len()) {
                Some(bytes) => out.extend_from_slice(&bytes),
                None => out.extend_from_slice(piece),
            }
        }
        out
    }

    const ASKED: &str = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"usage\":null,\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );
    const UNASKED: &str = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn the_client_gets_the_stream_it_asked_for() {
        assert_eq!(
            String::from_utf8(through(&[ASKED.as_bytes()])).unwrap(),
            UNASKED
        );
    }

    #[test]
    fn pieces_split_anywhere_give_the_same_stream() {
        let bytes = ASKED.as_bytes();
        for split in 0..=bytes.len() {
            let out = through(&[&bytes[..split], &bytes[split..]]);
            assert_eq!(String::from_utf8(out).unwrap(), UNASKED, "split at {split}");
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(String::from_utf8(through(&single)).unwrap(), UNASKED);
    }

    #[test]
    fn crlf_events_and_spacing_are_kept_byte_for_byte() {
        let asked = "event: x\r\ndata:{ \"a\" : 1 , \"usage\" : null }\r\n\r\ndata: {\"usage\": null}\r\n\r\n: comment\r\n\r\n";
        let want = "event: x\r\ndata:{ \"a\" : 1 }\r\n\r\ndata: {}\r\n\r\n: comment\r\n\r\n";
        assert_eq!(
            String::from_utf8(through(&[asked.as_bytes()])).unwrap(),
            want
        );
    }

    #[test]
    fn usage_on_a_chunk_with_choices_is_removed_not_the_chunk() {
        let asked = "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let want = "data: {\"choices\":[{\"delta\":{}}]}\n\n";
        assert_eq!(
            String::from_utf8(through(&[asked.as_bytes()])).unwrap(),
            want
        );
    }

    #[test]
    fn streams_without_usage_pass_untouched_and_uncopied() {
        let mut filter = UnaskedUsage::default();
        let event = b"data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}\n\n";
        assert_eq!(filter.filter(event, false), None);
        // A nested `usage` is the content's business.
        let nested = b"data: {\"choices\":[{\"delta\":{\"usage\":null}}]}\n\n";
        assert_eq!(filter.filter(nested, false), None);
        assert_eq!(filter.filter(b"data: [DONE]\n\n", true), None);
    }

    #[test]
    fn an_unfinished_event_is_held_until_its_end() {
        let mut filter = UnaskedUsage::default();
        assert_eq!(
            filter.filter(b"data: {\"choices\":[],", false),
            Some(Vec::new())
        );
        assert_eq!(
            filter.filter(b"\"usage\":{\"total_tokens\":3}}\n\ndata: [DO", false),
            Some(Vec::new())
        );
        assert_eq!(
            filter.filter(b"NE]\n\n", true),
            Some(b"data: [DONE]\n\n".to_vec())
        );
    }

    #[test]
    fn garbage_passes_as_it_came() {
        let odd =
            b"data: {\"usage\":null,\n\ndata: {\"usage\"}\n\ndata: {\"a\":\"\\\"usage\\\"\"}\n\n";
        assert_eq!(through(&[odd]), odd.to_vec());
    }
}
