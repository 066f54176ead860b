//! A tracker that answers what it is told: for tests of the range-scan path (and of the audit
//! that must catch a tracker that misses a change). Never chosen by the command line.

use crate::snapshot::FrozenView;

use super::{ChangeTracker, Changes, Since};

/// The answer function of a [`Given`] tracker.
pub type Answer = Box<dyn Fn(&Since) -> Changes + Send + Sync>;

/// A tracker whose answers come from a function.
pub struct Given {
    answer: Answer,
}

impl Given {
    /// A tracker answering `answer(since)`.
    pub fn new(answer: impl Fn(&Since) -> Changes + Send + Sync + 'static) -> Self {
        Given {
            answer: Box::new(answer),
        }
    }
}

impl ChangeTracker for Given {
    fn name(&self) -> &'static str {
        "given"
    }

    fn changed(&self, _: Option<&FrozenView>, _: &FrozenView, since: &Since) -> Changes {
        (self.answer)(since)
    }
}
