//! libFuzzer target: arbitrary bytes through every decoding a peer of the control
//! socket can reach (see `oet_protocol::fuzzing`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oet_protocol::fuzzing::decode_everything(data);
});
