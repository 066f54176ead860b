//! In-process transport: a pair of connected in-memory streams, used when DEST is a local path.
//! The receiver runs as a task in the same process; nothing leaves the machine.

use super::BoxStream;

/// Returns two connected streams (sender end, receiver end).
pub fn pair() -> (BoxStream, BoxStream) {
    let (a, b) = tokio::io::duplex(4 << 20);
    (Box::new(a), Box::new(b))
}
