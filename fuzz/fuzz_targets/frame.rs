//! Fuzz target `frame`: every input goes through [`blkmirror_fuzz::checks::frame`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        blkmirror_fuzz::checks::frame(data);
    });
}
