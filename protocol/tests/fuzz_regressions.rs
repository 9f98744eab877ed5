//! Every input kept in `fuzz_regressions/` (what the fuzz target found, and the
//! attacks it was written against) passes through the decoders as an ordinary test.

use std::path::Path;

#[test]
fn every_saved_input_decodes_or_is_refused_without_a_crash() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the regressions folder") {
        let path = entry.expect("an entry").path();
        let data = std::fs::read(&path).expect("an input");
        // A deeply nested input must not need more stack than a tokio worker has.
        let worker = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || oet_protocol::fuzzing::decode_everything(&data))
            .expect("a thread");
        assert!(
            worker.join().is_ok(),
            "{} crashed the decoders",
            path.display()
        );
        count += 1;
    }
    assert!(count > 0, "no inputs in {}", dir.display());
}
