//! The batching decision, kept free of I/O so it can be tested with a paused clock: which
//! waiting requests run together, when to wait for more, and which requests have expired.

use std::collections::VecDeque;
use std::sync::Arc;

use infergate_config::DynamicBatching;
use infergate_runtime::DataType;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use crate::core::{InferRequest, InferResponse};
use crate::error::BoxError;

/// Requests can share a batch only when every input agrees on all but the first dimension;
/// token sequences (`InferRequest::tokens`) of any length share one, padded to the longest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShapeKey(Vec<(Arc<str>, DataType, Vec<i64>)>);

impl ShapeKey {
    pub fn of(req: &InferRequest) -> Self {
        let ragged = req.tokens.is_some();
        let mut key: Vec<_> = req
            .inputs
            .iter()
            .map(|i| {
                let dims = if ragged {
                    &[][..]
                } else {
                    i.tensor.shape().get(1..).unwrap_or(&[])
                };
                (Arc::clone(&i.name), i.tensor.dtype(), dims.to_vec())
            })
            .collect();
        key.sort_by(|a, b| a.0.cmp(&b.0));
        Self(key)
    }
}

/// A request waiting for a batch, with the channel its answer goes back on.
pub struct Pending {
    pub req: InferRequest,
    pub reply: oneshot::Sender<Result<InferResponse, BoxError>>,
    pub enqueued: Instant,
    pub rows: usize,
    /// Token sequences: the longest row's length (0 for other requests).
    pub seq: usize,
    pub key: ShapeKey,
    /// Open while the request waits; closed when its batch starts.
    pub waiting: tracing::Span,
}

/// What to do now that an instance is free.
pub enum Decision {
    /// Nothing is waiting.
    Empty,
    /// Run these requests together (in queue order).
    Run(Vec<Pending>),
    /// Wait for more requests until this time (the oldest request's delay window).
    WaitUntil(Instant),
}

/// Requests removed because they cannot run.
#[derive(Default)]
pub struct Pruned {
    /// Past their deadline: they fail with 504 without running.
    pub expired: Vec<Pending>,
    /// Their caller went away.
    pub cancelled: usize,
}

/// Per-priority FIFO queues of one model version.
pub struct BatchQueue {
    levels: Vec<VecDeque<Pending>>,
    settings: DynamicBatching,
    max_batch: usize,
}

impl BatchQueue {
    pub fn new(settings: DynamicBatching, max_batch: usize) -> Self {
        Self {
            levels: (0..settings.priority_levels.max(1))
                .map(|_| VecDeque::new())
                .collect(),
            settings,
            max_batch: max_batch.max(1),
        }
    }

    /// The queue index of a request's priority (validated by `level_of`).
    pub fn push(&mut self, p: Pending) {
        let level = self.level_of(p.req.priority).unwrap_or(0);
        self.levels[level].push_back(p);
    }

    /// 0-based level for a `priority` parameter (0 = default), or `None` when out of range.
    pub fn level_of(&self, priority: u32) -> Option<usize> {
        let priority = if priority == 0 {
            self.settings.default_priority_level
        } else {
            priority
        };
        (1..=self.levels.len() as u32)
            .contains(&priority)
            .then(|| priority as usize - 1)
    }

    /// The earliest deadline of any waiting request.
    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.levels
            .iter()
            .flatten()
            .filter_map(|p| p.req.deadline)
            .min()
    }

    pub fn len(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum()
    }

    /// Rows of every waiting request.
    pub fn rows(&self) -> usize {
        self.levels.iter().flatten().map(|p| p.rows).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(VecDeque::is_empty)
    }

    /// Takes out requests whose deadline has passed or whose caller is gone.
    pub fn prune(&mut self, now: Instant) -> Pruned {
        let mut pruned = Pruned::default();
        let stale = |p: &Pending| p.reply.is_closed() || p.req.deadline.is_some_and(|d| d <= now);
        for level in &mut self.levels {
            // Usually every request is still wanted: then nothing is moved.
            if !level.iter().any(stale) {
                continue;
            }
            let mut kept = VecDeque::with_capacity(level.len());
            for p in level.drain(..) {
                if p.reply.is_closed() {
                    pruned.cancelled += 1;
                } else if p.req.deadline.is_some_and(|d| d <= now) {
                    pruned.expired.push(p);
                } else {
                    kept.push_back(p);
                }
            }
            *level = kept;
        }
        pruned
    }

    /// Decides with one instance free at `now`. The head is the oldest request of the highest
    /// priority; it runs with compatible requests (higher priorities first) up to
    /// `max_batch_size` rows and, for token sequences, `max_batch_tokens` padded tokens (the
    /// head always runs, however long). With `group_by_length`, token sequences closest in
    /// length to the head's are taken first within a priority level. With a delay configured, a
    /// batch that is neither full nor a preferred size waits until the head's delay window
    /// closes.
    pub fn next(&mut self, now: Instant) -> Decision {
        let Some(head_level) = self.levels.iter().position(|l| !l.is_empty()) else {
            return Decision::Empty;
        };
        let head = &self.levels[head_level][0];
        let (key, window_end, head_seq) = (
            head.key.clone(),
            head.enqueued + Duration::from_micros(self.settings.max_queue_delay_us),
            head.seq,
        );
        let budget = match self.settings.max_batch_tokens {
            0 => usize::MAX,
            b => usize::try_from(b).unwrap_or(usize::MAX),
        };
        let mut candidates: Vec<(usize, usize)> = Vec::new();
        for (l, level) in self.levels.iter().enumerate() {
            let start = candidates.len();
            candidates.extend(
                level
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.key == key)
                    .map(|(i, _)| (l, i)),
            );
            if self.settings.group_by_length && head_seq > 0 {
                // Stable: equally close requests keep their arrival order.
                candidates[start..].sort_by_key(|&(l, i)| self.levels[l][i].seq.abs_diff(head_seq));
            }
        }
        let mut chosen: Vec<(usize, usize)> = Vec::new();
        let (mut rows, mut seq) = (0, 0);
        let mut full = false;
        for (l, i) in candidates {
            let p = &self.levels[l][i];
            if rows + p.rows > self.max_batch {
                full = true;
                break;
            }
            let widest = seq.max(p.seq);
            if !chosen.is_empty() && (rows + p.rows).saturating_mul(widest) > budget {
                // Over the token budget: a shorter request further on may still fit.
                full = true;
                continue;
            }
            rows += p.rows;
            seq = widest;
            chosen.push((l, i));
            if rows == self.max_batch {
                full = true;
                break;
            }
        }
        // Removed back to front below, so indices stay valid; the batch is in queue order.
        chosen.sort_unstable();
        let preferred = self
            .settings
            .preferred_batch_sizes
            .iter()
            .any(|&s| s as usize == rows);
        let wait = self.settings.max_queue_delay_us > 0 && !full && !preferred && now < window_end;
        if wait {
            return Decision::WaitUntil(window_end);
        }
        // Remove the chosen entries (back to front so indices stay valid) and restore order.
        let mut batch: Vec<Pending> = Vec::with_capacity(chosen.len());
        for &(l, i) in chosen.iter().rev() {
            if let Some(p) = self.levels[l].remove(i) {
                batch.push(p);
            }
        }
        batch.reverse();
        Decision::Run(batch)
    }
}

#[cfg(test)]
mod tests {
    use infergate_runtime::{NamedTensor, Tensor};

    use super::*;
    use crate::core::Protocol;

    fn pending(
        rows: usize,
        cols: usize,
        priority: u32,
        deadline_us: Option<u64>,
    ) -> (Pending, oneshot::Receiver<Result<InferResponse, BoxError>>) {
        let mut req = InferRequest::new("m", None, Protocol::Http);
        req.priority = priority;
        let data = vec![0f32; rows * cols];
        req.inputs.push(NamedTensor::new(
            "x",
            Tensor::from_slice(vec![rows as i64, cols as i64], &data).unwrap(),
        ));
        if let Some(us) = deadline_us {
            req.tighten_deadline(Duration::from_micros(us));
        }
        let (tx, rx) = oneshot::channel();
        let key = ShapeKey::of(&req);
        (
            Pending {
                req,
                reply: tx,
                enqueued: Instant::now(),
                rows,
                seq: 0,
                key,
                waiting: tracing::Span::none(),
            },
            rx,
        )
    }

    /// A text model's request: one row of `len` tokens, as the tokenize layer leaves it.
    fn tokens(
        len: usize,
        priority: u32,
    ) -> (Pending, oneshot::Receiver<Result<InferResponse, BoxError>>) {
        let mut req = InferRequest::new("m", None, Protocol::Http);
        req.priority = priority;
        for name in ["input_ids", "attention_mask"] {
            let t = Tensor::from_slice(vec![1, len as i64], &vec![1i64; len]).unwrap();
            req.inputs.push(NamedTensor::new(name, t));
        }
        req.tokens = Some(crate::core::Tokens {
            seq: len,
            real: len,
        });
        let (tx, rx) = oneshot::channel();
        let key = ShapeKey::of(&req);
        let p = Pending {
            req,
            reply: tx,
            enqueued: Instant::now(),
            rows: 1,
            seq: len,
            key,
            waiting: tracing::Span::none(),
        };
        (p, rx)
    }

    fn seqs(d: Decision) -> Vec<usize> {
        match d {
            Decision::Run(b) => b.iter().map(|p| p.seq).collect(),
            _ => panic!("expected a batch"),
        }
    }

    fn token_queue(
        budget: u64,
        group: bool,
        lengths: &[(usize, u32)],
    ) -> (
        BatchQueue,
        Vec<oneshot::Receiver<Result<InferResponse, BoxError>>>,
    ) {
        let settings = DynamicBatching {
            max_batch_tokens: budget,
            group_by_length: group,
            priority_levels: 2,
            ..DynamicBatching::default()
        };
        let mut q = BatchQueue::new(settings, 64);
        let mut keep = Vec::new();
        for &(len, priority) in lengths {
            let (p, rx) = tokens(len, priority);
            q.push(p);
            keep.push(rx);
        }
        (q, keep)
    }

    #[tokio::test(start_paused = true)]
    async fn token_sequences_of_any_length_share_a_batch_within_the_token_budget() {
        // In arrival order: 10 + 50 fit 100 padded tokens (2 x 50); a third row would make 150.
        let (mut q, _keep) = token_queue(100, false, &[(10, 0), (50, 0), (10, 0), (40, 0)]);
        assert_eq!(seqs(q.next(Instant::now())), vec![10, 50]);
        assert_eq!(seqs(q.next(Instant::now())), vec![10, 40]);
        // No budget: rows alone count.
        let (mut q, _keep) = token_queue(0, false, &[(10, 0), (500, 0), (7, 0)]);
        assert_eq!(seqs(q.next(Instant::now())), vec![10, 500, 7]);
    }

    #[tokio::test(start_paused = true)]
    async fn grouping_by_length_takes_the_closest_lengths_first_and_the_head_always_runs() {
        // The head (10) is joined by the other short rows before the long ones.
        let lengths = [(10, 0), (60, 0), (12, 0), (64, 0), (9, 0), (11, 0)];
        let (mut q, _keep) = token_queue(64, true, &lengths);
        assert_eq!(seqs(q.next(Instant::now())), vec![10, 12, 9, 11]);
        assert_eq!(seqs(q.next(Instant::now())), vec![60]);
        assert_eq!(seqs(q.next(Instant::now())), vec![64]);
        // A head longer than the budget still runs, alone.
        let (mut q, _keep) = token_queue(64, true, &[(300, 0), (5, 0)]);
        assert_eq!(seqs(q.next(Instant::now())), vec![300]);
        assert_eq!(seqs(q.next(Instant::now())), vec![5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_high_priority_request_is_not_passed_by_short_ones() {
        // Priorities as for every model: the level-1 long row heads the batch.
        let (mut q, _keep) = token_queue(128, true, &[(8, 2), (8, 2), (100, 1)]);
        assert_eq!(seqs(q.next(Instant::now())), vec![100]);
        assert_eq!(seqs(q.next(Instant::now())), vec![8, 8]);
    }

    fn settings(delay_us: u64, preferred: Vec<u32>, levels: u32) -> DynamicBatching {
        DynamicBatching {
            max_queue_delay_us: delay_us,
            preferred_batch_sizes: preferred,
            priority_levels: levels,
            ..DynamicBatching::default()
        }
    }

    fn rows(d: Decision) -> Vec<usize> {
        match d {
            Decision::Run(b) => b.iter().map(|p| p.rows).collect(),
            Decision::WaitUntil(_) => panic!("expected a batch, got a wait"),
            Decision::Empty => panic!("expected a batch, got nothing"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_delay_everything_compatible_runs_now_up_to_max() {
        let mut q = BatchQueue::new(settings(0, vec![], 1), 8);
        let mut keep = Vec::new();
        for r in [3, 2, 4, 1] {
            let (p, rx) = pending(r, 4, 0, None);
            q.push(p);
            keep.push(rx);
        }
        assert_eq!(rows(q.next(Instant::now())), vec![3, 2]);
        assert_eq!(rows(q.next(Instant::now())), vec![4, 1]);
        assert!(matches!(q.next(Instant::now()), Decision::Empty));
    }

    #[tokio::test(start_paused = true)]
    async fn incompatible_shapes_never_share_a_batch() {
        let mut q = BatchQueue::new(settings(0, vec![], 1), 64);
        let mut keep = Vec::new();
        for cols in [4, 5, 4, 5] {
            let (p, rx) = pending(1, cols, 0, None);
            q.push(p);
            keep.push(rx);
        }
        let first = match q.next(Instant::now()) {
            Decision::Run(b) => b,
            _ => panic!(),
        };
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|p| p.req.inputs[0].tensor.shape()[1] == 4));
        assert_eq!(rows(q.next(Instant::now())), vec![1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_window_waits_for_more_until_it_closes() {
        let mut q = BatchQueue::new(settings(500, vec![], 1), 8);
        let (p, _rx1) = pending(2, 4, 0, None);
        let window = p.enqueued + Duration::from_micros(500);
        q.push(p);
        match q.next(Instant::now()) {
            Decision::WaitUntil(t) => assert_eq!(t, window),
            _ => panic!("a lone request waits for its window"),
        }
        tokio::time::advance(Duration::from_micros(200)).await;
        let (p, _rx2) = pending(3, 4, 0, None);
        q.push(p);
        assert!(matches!(q.next(Instant::now()), Decision::WaitUntil(_)));
        tokio::time::advance(Duration::from_micros(300)).await;
        assert_eq!(
            rows(q.next(Instant::now())),
            vec![2, 3],
            "the window closed: run what is there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_or_preferred_batch_does_not_wait() {
        let mut q = BatchQueue::new(settings(10_000, vec![4], 1), 8);
        let (a, _ra) = pending(2, 4, 0, None);
        let (b, _rb) = pending(2, 4, 0, None);
        q.push(a);
        q.push(b);
        assert_eq!(
            rows(q.next(Instant::now())),
            vec![2, 2],
            "4 rows is a preferred size"
        );
        let (c, _rc) = pending(5, 4, 0, None);
        let (d, _rd) = pending(3, 4, 0, None);
        q.push(c);
        q.push(d);
        assert_eq!(rows(q.next(Instant::now())), vec![5, 3], "8 rows is full");
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priority_runs_first_and_fills_before_lower() {
        let mut q = BatchQueue::new(settings(0, vec![], 2), 3);
        let mut keep = Vec::new();
        for (r, priority) in [(1, 2), (1, 2), (1, 1), (1, 0)] {
            let (p, rx) = pending(r, 4, priority, None);
            q.push(p);
            keep.push(rx);
        }
        // default_priority_level is 1, so priority 0 is level 1 as well.
        let batch = match q.next(Instant::now()) {
            Decision::Run(b) => b,
            _ => panic!(),
        };
        let priorities: Vec<u32> = batch.iter().map(|p| p.req.priority).collect();
        assert_eq!(priorities, vec![1, 0, 2]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.level_of(3), None, "only 2 levels");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_and_abandoned_requests_are_pruned_before_running() {
        let mut q = BatchQueue::new(settings(0, vec![], 1), 8);
        let (a, _ra) = pending(1, 4, 0, Some(1_000));
        let (b, rb) = pending(1, 4, 0, None);
        let (c, _rc) = pending(1, 4, 0, Some(1_000_000));
        q.push(a);
        q.push(b);
        q.push(c);
        drop(rb);
        tokio::time::advance(Duration::from_millis(2)).await;
        let pruned = q.prune(Instant::now());
        assert_eq!(pruned.expired.len(), 1);
        assert_eq!(pruned.cancelled, 1);
        assert_eq!(rows(q.next(Instant::now())), vec![1]);
        assert!(q.is_empty());
    }
}
