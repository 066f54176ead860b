//! What a receiver runs around its commits besides the commit itself
//! ([`crate::receiver::CommitHook`]): the `--post-commit` shell hook ([`PostCommitHook`]),
//! and [`AllOf`], which tells several hooks (a chain's forwarder and a post-commit hook) in
//! order.

use std::path::Path;
use std::sync::Arc;

use crate::blockdiff::manifest::BlockHash;
use crate::blockdiff::ranges::RangeSet;
use crate::receiver::CommitHook;
use crate::snapshot::hooks::{run_post_commit, PostCommit};

/// `receive --post-commit COMMAND`: after each committed generation, the command runs with
/// `BLKMIRROR_TARGET`, `BLKMIRROR_GENERATION` and `BLKMIRROR_ROOT` (and
/// `BLKMIRROR_HOOK=post-commit`); the receiver takes the next generation after it (bounded by
/// its timeout). A failure is logged; the generation stays committed.
#[derive(Debug)]
pub struct PostCommitHook(pub PostCommit);

impl CommitHook for PostCommitHook {
    fn cycle_starting(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn cycle_wrote(&self, _: &RangeSet, _: u32) -> std::io::Result<()> {
        Ok(())
    }

    fn committed(&self, target: &Path, generation: u64, root: BlockHash) {
        let env = [
            ("BLKMIRROR_TARGET", target.display().to_string()),
            ("BLKMIRROR_GENERATION", generation.to_string()),
            ("BLKMIRROR_ROOT", hex::encode(root)),
        ];
        run_post_commit(&self.0, &env);
    }
}

/// Several hooks, told in order; the first error of a step is returned after every hook was
/// told (none is skipped because another failed).
#[derive(Debug)]
pub struct AllOf(pub Vec<Arc<dyn CommitHook>>);

impl CommitHook for AllOf {
    fn cycle_starting(&self) -> std::io::Result<()> {
        let told: Vec<std::io::Result<()>> = self.0.iter().map(|h| h.cycle_starting()).collect();
        told.into_iter().collect()
    }

    fn cycle_wrote(&self, written: &RangeSet, block_size: u32) -> std::io::Result<()> {
        let told: Vec<std::io::Result<()>> = self
            .0
            .iter()
            .map(|h| h.cycle_wrote(written, block_size))
            .collect();
        told.into_iter().collect()
    }

    fn committed(&self, target: &Path, generation: u64, root: BlockHash) {
        for hook in &self.0 {
            hook.committed(target, generation, root);
        }
    }
}
