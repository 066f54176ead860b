//! Fuzz target `state`: every input goes through [`blkmirror_fuzz::checks::state`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        blkmirror_fuzz::checks::state(data);
    });
}
