//! The fuzz targets' checks (fuzz/checks.rs) on every `cargo test`: the committed corpus, then mutations of
//! it (bit flips, truncations, splices, insertions of interesting bytes) from a seeded generator for a
//! bounded time per target. Coverage-guided fuzzing of the same checks is `tests/fuzz.sh` (libFuzzer); this
//! keeps CI free of the instrumented build while still failing on any input that panics.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::Path;
use std::time::{Duration, Instant};

type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("basic_auth", checks::basic_auth),
    ("conditional", checks::conditional),
    ("dav_request", checks::dav_request),
    ("query_filter", checks::query_filter),
    ("router", checks::router),
    ("vcard", checks::vcard),
];

/// xorshift64*: deterministic, so a failure names a seed that repeats it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"<",
    b">",
    b"&",
    b"&#0;",
    b"&amp;",
    b"<!DOCTYPE x>",
    b"xmlns=\"\"",
    b"\"",
    b":",
    b";",
    b"=",
    b",",
    b"\\",
    b"\r\n",
    b"\r\n ",
    b"\0",
    b"\xff",
    b"\xc0\xaf",
    b"%",
    b"%2e%2e/",
    b"%00",
    b"//",
    b"/../",
    b"+",
    b"@",
    b"BEGIN:VCARD\r\n",
    b"END:VCARD\r\n",
    b"VERSION:4.0\r\n",
    b"ENCODING=b",
    b"data:,",
    b"\xce\xa3",
    b"\xe2\x80\xae",
];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(at),
            2 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            3 if !out.is_empty() => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at.min(end)..end);
            }
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(256)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                let i = rng.below(out.len() + 1);
                let chunk: Vec<u8> = out[i.min(out.len())..].iter().take(rng.below(32)).copied().collect();
                out.splice(at..at, chunk);
            }
        }
    }
    out
}

fn corpus_of(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).expect("corpus file")).collect()
}

fn run_guarded(check: Check, input: &[u8], what: &str) {
    if std::panic::catch_unwind(|| check(input)).is_err() {
        panic!("{what} panicked on input {:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn fuzz_checks_hold_on_the_corpus_and_its_mutations() {
    let per_target =
        Duration::from_millis(std::env::var("FUZZ_REPLAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_500));
    let seed: u64 = std::env::var("KARTEI_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x6b61_7274_6569);
    let mut summary = Vec::new();
    for (name, check) in TARGETS {
        let corpus = corpus_of(name);
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        for input in &corpus {
            run_guarded(*check, input, &format!("{name} (corpus)"));
        }
        let mut rng = Rng(seed ^ name.len() as u64 ^ 0x9e37_79b9_7f4a_7c15);
        let started = Instant::now();
        let mut runs = 0u64;
        while started.elapsed() < per_target {
            let base = &corpus[rng.below(corpus.len())];
            let input = mutate(&mut rng, base, &corpus);
            run_guarded(*check, &input, &format!("{name} (mutation, seed {seed})"));
            runs += 1;
        }
        summary.push(format!("{name}: {} corpus inputs + {runs} mutations", corpus.len()));
    }
    eprintln!("fuzz replay (seed {seed}): {}", summary.join("; "));
}
