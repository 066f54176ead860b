//! The `blkmirror` binary: everything lives in the library; see `blkmirror::cli`.

fn main() {
    std::process::exit(blkmirror::cli::main());
}
