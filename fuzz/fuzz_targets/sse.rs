//! The event-stream usage reader: `usage::sse::SseUsage` fed the same bytes whole, byte by
//! byte and cut at points the input chooses, must reach the same outcome (and drop the same
//! over-long lines) every time.
//!
//! Input: one byte `n`, then `n % 16` two-byte cut points, then one byte choosing the line
//! limit (0: the default; otherwise a small limit so that over-long lines happen), then the
//! stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::usage::sse::{SseOutcome, SseUsage, MAX_LINE_BYTES};

fn reader(max_line: usize) -> SseUsage {
    if max_line == MAX_LINE_BYTES {
        SseUsage::new()
    } else {
        SseUsage::with_max_line(max_line)
    }
}

fn read(max_line: usize, pieces: &mut dyn Iterator<Item = &[u8]>) -> (SseOutcome, u64) {
    let mut r = reader(max_line);
    for piece in pieces {
        r.feed(piece);
    }
    let dropped = r.dropped_lines();
    let outcome = r.finish();
    let (usage, estimated) = outcome.tokens_or_estimate(1000);
    assert!(usage.cached_input_tokens <= usage.input_tokens);
    assert!(usage.reasoning_tokens <= usage.output_tokens);
    assert_eq!(estimated, !(outcome.complete && outcome.usage.is_some()));
    (outcome, dropped)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16);
    if rest.len() < 2 * n + 1 {
        return;
    }
    let (cuts, rest) = rest.split_at(2 * n);
    let (&limit, stream) = rest.split_first().expect("length checked");
    let max_line = match limit {
        0 => MAX_LINE_BYTES,
        l => usize::from(l % 64),
    };

    let mut cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = read(max_line, &mut std::iter::once(stream));
    let bytewise = read(max_line, &mut stream.chunks(1));
    assert_eq!(bytewise, whole, "byte by byte");

    // Pieces between consecutive cut points (empty ones included, when points repeat).
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(cuts)
        .chain([stream.len()])
        .collect();
    let split = read(
        max_line,
        &mut bounds.windows(2).map(|w| &stream[w[0]..w[1]]),
    );
    assert_eq!(split, whole, "cut at {:?}", &bounds[1..bounds.len() - 1]);
});
