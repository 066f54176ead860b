//! Fuzz target `manifest`: every input goes through [`blkmirror_fuzz::checks::manifest`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        blkmirror_fuzz::checks::manifest(data);
    });
}
