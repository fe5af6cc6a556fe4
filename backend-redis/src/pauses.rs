//! Test-only pause points.

use std::sync::Arc;

use tokio::sync::Notify;

/// Test-only: named points where an operation can be made to wait, so a
/// test can put a fault (a prune, a crash) exactly there. Not part of the
/// API; nothing waits unless a test armed a point.
/// One armed point: its name, what it notifies, what it waits for.
type Armed = (&'static str, Arc<Notify>, Arc<Notify>);

#[doc(hidden)]
#[derive(Default)]
pub struct Pauses {
    armed: std::sync::Mutex<Vec<Armed>>,
}

impl Pauses {
    /// Arm `point`: the next operation that reaches it notifies the first
    /// `Notify` and waits for the second.
    pub fn arm(&self, point: &'static str) -> (Arc<Notify>, Arc<Notify>) {
        let (reached, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        self.armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((point, Arc::clone(&reached), Arc::clone(&resume)));
        (reached, resume)
    }

    pub(crate) async fn at(&self, point: &'static str) {
        let armed = {
            let mut armed = self
                .armed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if armed.is_empty() {
                return;
            }
            armed
                .iter()
                .position(|(p, _, _)| *p == point)
                .map(|at| armed.remove(at))
        };
        if let Some((_, reached, resume)) = armed {
            reached.notify_one();
            resume.notified().await;
        }
    }
}
