//! The batch policies, and when each closes a batch.

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchPolicy {
    /// `eager` on the CPU, `deadline` on a GPU (the default; see [`BatchPolicy::resolve`]).
    Auto,
    /// Wait up to the timeout for a full batch.
    Deadline,
    /// Run whatever waits as soon as the model is free (text-embeddings-inference's way).
    Eager,
    /// No merging: every call is its own forward pass (split only by the batch
    /// limits), as soon as the model is free. The "dynamic batching off" baseline.
    None,
}

impl BatchPolicy {
    /// The policy `auto` stands for on a backend. On a GPU a fuller batch costs little
    /// more than a small one, so waiting for one pays. On the CPU the cost per pair
    /// hardly falls past a batch of 8 (README, "The model alone"), so a batch waiting
    /// for company only leaves the cores idle: measured, `eager` served more than
    /// `deadline` at every load `bench-serve` runs.
    pub fn resolve(self, backend: crossbatch_model::backend::BackendKind) -> Self {
        use crossbatch_model::backend::BackendKind;
        match (self, backend) {
            (Self::Auto, BackendKind::Cpu) => Self::Eager,
            (Self::Auto, BackendKind::Wgpu) => Self::Deadline,
            (other, _) => other,
        }
    }

    /// Whether a batch closes now, with `waiting` pairs queued (at least one) and the
    /// oldest due to run at `oldest_due` (its arrival plus the batch timeout). Only
    /// `deadline` ever waits; shutting down never does.
    pub(super) fn closes(
        self,
        waiting: usize,
        max_batch: usize,
        shutting_down: bool,
        oldest_due: Instant,
        now: Instant,
    ) -> bool {
        match self {
            // `auto` is resolved before the batcher starts; unresolved, it is eager.
            Self::Eager | Self::None | Self::Auto => true,
            Self::Deadline => waiting >= max_batch || shutting_down || now >= oldest_due,
        }
    }
}

impl std::fmt::Display for BatchPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Deadline => "deadline",
            Self::Eager => "eager",
            Self::None => "none",
        })
    }
}
