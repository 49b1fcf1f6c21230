//! SSE decoding, differentially: the events decoded from the whole input must equal those decoded
//! from the same bytes fed in arbitrary pieces (and one byte at a time), and re-encoding the
//! decoded events must decode to the same events again.
//!
//! Input layout: byte 0 = number of cuts (mod 16), then two bytes (little endian) per cut, then
//! the SSE bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use optiroute_fuzz::{decode_split, encode_events};

fuzz_target!(|data: &[u8]| {
    let (ncuts, rest) = match data.split_first() {
        Some((n, rest)) => (usize::from(*n % 16), rest),
        None => (0, data),
    };
    let (cut_bytes, input) = rest.split_at((ncuts * 2).min(rest.len()));
    let cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])) % (input.len() + 1))
        .collect();

    let whole = decode_split(input, &[]);
    assert_eq!(
        decode_split(input, &cuts),
        whole,
        "split at {cuts:?} changed the events"
    );
    if input.len() <= 512 {
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            decode_split(input, &every),
            whole,
            "byte-at-a-time feeding changed the events"
        );
    }
    for ev in &whole {
        assert!(!ev.data.contains('\r'), "CR inside data: {ev:?}");
        if let Some(name) = &ev.event {
            assert!(!name.contains(['\r', '\n']), "line break inside event name: {ev:?}");
        }
    }
    assert_eq!(
        decode_split(&encode_events(&whole), &[]),
        whole,
        "re-encoding changed the events"
    );
});
