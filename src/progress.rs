//! Progress reporting seam. The engine calls a [`Progress`]; the CLI implements it with
//! indicatif bars (terminal) or not at all. Core modules never print.

/// The long-running stages a user may watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Hashing the source (sender).
    Scan,
    /// Hashing the target to rebuild a lost manifest (receiver).
    HashTarget,
    /// Comparing two devices (`verify`).
    Verify,
}

impl Stage {
    /// The stage's name on a progress bar.
    pub fn label(&self) -> &'static str {
        match self {
            Stage::Scan => "scan",
            Stage::HashTarget => "hash target",
            Stage::Verify => "verify",
        }
    }
}

/// Receives progress events. Implementations must be cheap: `advance` is called per chunk.
pub trait Progress: Send + Sync {
    /// A stage begins; `total` is its size in bytes.
    fn start(&self, _stage: Stage, _total: u64) {}
    /// `bytes` more of the stage are done; `shipped` is payload bytes queued for sending so far.
    fn advance(&self, _stage: Stage, _bytes: u64, _shipped: u64) {}
    /// The stage is over.
    fn finish(&self, _stage: Stage) {}
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
