//! Group commit: concurrent calls wait in one queue, and the first caller to
//! get a turn (one of a few batches in flight, then a connection) runs every
//! call queued by then as one batch: under load, one round trip carries many
//! rows; alone, a call is a batch of one and waits for nothing. Two users: the
//! store's claims and finishes (one statement, one commit) and the publisher's
//! messages (one publish request). What a batch means is theirs to say; this
//! module only queues, takes and answers.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::Span;

/// How large a batch may grow, and how many run at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The most calls one batch carries.
    pub(crate) rows: usize,
    /// The most bytes one batch carries; a batch always takes at least one
    /// call, however large.
    pub(crate) bytes: usize,
    /// Batches in flight at once. Few, so that calls queue up behind them and
    /// the next batch carries many: the far side spends its work on rows
    /// rather than on requests.
    pub(crate) in_flight: usize,
}

/// What a caller is told when the queue itself fails it.
pub(crate) trait QueueError: Send + 'static {
    /// No turn came within `wait`, and no batch took the call meanwhile.
    fn no_turn(wait: Duration) -> Self;

    /// The batch that took the call ended without answering it: it panicked.
    fn lost() -> Self;
}

/// What a queued call carries.
pub(crate) trait Row: Send + 'static {
    /// Two rows with one key never share a batch (one statement cannot touch
    /// a table row twice); batches are sorted by key.
    fn key(&self) -> &str;

    /// The size of what the row carries, to bound a batch.
    fn bytes(&self) -> usize;
}

/// A call taken into a batch, and where its answer goes.
#[derive(Debug)]
pub(crate) struct Waiting<T, A, E> {
    ticket: u64,
    pub(crate) row: T,
    answer: oneshot::Sender<Result<A, E>>,
}

impl<T, A, E> Waiting<T, A, E> {
    /// Wakes the caller with its result; one that has gone away is not told.
    pub(crate) fn answer(self, result: Result<A, E>) {
        let _ = self.answer.send(result);
    }
}

/// A queued call, with the span of the caller that queued it.
type Queued<T, A, E> = (Waiting<T, A, E>, Span);

/// The calls waiting for a batch to take them.
#[derive(Debug)]
pub(crate) struct Queue<T, A, E> {
    // A std Mutex: it is held only to push, take or remove, never across an await.
    waiting: Mutex<Vec<Queued<T, A, E>>>,
    tickets: AtomicU64,
    in_flight: Arc<Semaphore>,
    limits: Limits,
}

impl<T, A, E> Queue<T, A, E> {
    pub(crate) fn new(limits: Limits) -> Self {
        let in_flight = Arc::new(Semaphore::new(limits.in_flight));
        Self { waiting: Mutex::new(Vec::new()), tickets: AtomicU64::new(0), in_flight, limits }
    }
}

impl<T: Row, A: Send + 'static, E: QueueError> Queue<T, A, E> {
    /// Queues `row` and waits for its answer. Meanwhile the caller waits for
    /// a turn: a batch's place and then a connection (`connect`), both
    /// within `wait`. If the turn comes before the answer, the caller takes
    /// the queue and runs it as a batch (see [`Queue::run`]). A caller whose
    /// turn does not come in time gets the reason, unless a batch took its
    /// row meanwhile.
    pub(crate) async fn submit<C, Connecting, Running>(
        &self,
        row: T,
        wait: Duration,
        connect: impl Fn(Instant) -> Connecting,
        run: impl Fn(C, Vec<Waiting<T, A, E>>) -> Running,
    ) -> Result<A, E>
    where
        Connecting: Future<Output = Result<C, E>>,
        Running: Future<Output = ()> + Send + 'static,
    {
        let (sender, mut answer) = oneshot::channel();
        let queued = self.push(row, sender);
        let deadline = Instant::now() + wait;
        // More than one turn only for a row whose key was in the batch taken.
        while queued.is_waiting() {
            let turn = tokio::select! {
                biased;
                answered = &mut answer => return answered.unwrap_or_else(|_| Err(E::lost())),
                turn = self.turn(deadline, wait, &connect) => turn,
            };
            match turn {
                Ok((place, connection)) => self.run(place, connection, &run),
                Err(error) if queued.withdraw() => return Err(error),
                Err(_) => {}
            }
        }
        answer.await.unwrap_or_else(|_| Err(E::lost()))
    }

    /// A place among the batches in flight, then a connection, by `deadline`.
    async fn turn<C, Connecting>(
        &self,
        deadline: Instant,
        wait: Duration,
        connect: impl Fn(Instant) -> Connecting,
    ) -> Result<(OwnedSemaphorePermit, C), E>
    where
        Connecting: Future<Output = Result<C, E>>,
    {
        let place = tokio::time::timeout_at(deadline.into(), Arc::clone(&self.in_flight).acquire_owned());
        // The semaphore is never closed.
        let Ok(Ok(place)) = place.await else { return Err(E::no_turn(wait)) };
        Ok((place, connect(deadline).await?))
    }

    /// Takes the queue and runs it on a task of its own, which keeps the
    /// batch's place until it ends: a caller that goes away strands no one.
    fn run<C, Running>(
        &self,
        place: OwnedSemaphorePermit,
        connection: C,
        run: impl Fn(C, Vec<Waiting<T, A, E>>) -> Running,
    ) where
        Running: Future<Output = ()> + Send + 'static,
    {
        let batch = self.take();
        if batch.is_empty() {
            return;
        }
        // Not an async block, which would hold the batch's future twice.
        tokio::spawn(run(connection, batch).map(move |()| drop(place)));
    }

    fn push(&self, row: T, answer: oneshot::Sender<Result<A, E>>) -> Place<'_, T, A, E> {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.lock().push((Waiting { ticket, row, answer }, batch_span()));
        Place { queue: self, ticket }
    }

    /// Everything queued that fits one batch, sorted by key so that
    /// concurrent statements lock rows in one order and never deadlock.
    fn take(&self) -> Vec<Waiting<T, A, E>> {
        let (mut batch, mut bytes, mut spans) = (Vec::new(), 0, Vec::new());
        let mut waiting = self.lock();
        let mut left = Vec::new();
        for (call, span) in waiting.drain(..) {
            let Limits { rows, bytes: most, .. } = self.limits;
            let fits = batch.is_empty() || (batch.len() < rows && bytes + call.row.bytes() <= most);
            if fits && !batch.iter().any(|taken: &Waiting<T, A, E>| taken.row.key() == call.row.key()) {
                bytes += call.row.bytes();
                batch.push(call);
                spans.push(span);
            } else {
                left.push((call, span));
            }
        }
        *waiting = left;
        drop(waiting);
        if batch.len() > 1 {
            for span in spans {
                span.record(BATCH_SIZE, batch.len());
            }
        }
        batch.sort_unstable_by(|a, b| a.row.key().cmp(b.row.key()));
        batch
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Queued<T, A, E>>> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The field of a caller's span that says how many calls shared its batch.
const BATCH_SIZE: &str = "db.operation.batch.size";

/// The caller's span if it has a [`BATCH_SIZE`] (the store's, made only when
/// spans are exported), else none: keeping any other (the task's) would cost
/// a registry lookup to clone it and one to drop it, for nothing.
fn batch_span() -> Span {
    let current = tracing::dispatcher::get_default(|dispatch| dispatch.current_span());
    match current.metadata() {
        Some(metadata) if metadata.fields().field(BATCH_SIZE).is_some() => Span::current(),
        _ => Span::none(),
    }
}

/// A caller's place in the queue; dropped, the row leaves the queue with it.
struct Place<'a, T: Row, A: Send + 'static, E: QueueError> {
    queue: &'a Queue<T, A, E>,
    ticket: u64,
}

impl<T: Row, A: Send + 'static, E: QueueError> Place<'_, T, A, E> {
    fn is_waiting(&self) -> bool {
        self.queue.lock().iter().any(|(call, _)| call.ticket == self.ticket)
    }

    /// Takes the row out of the queue; false when a batch has it already.
    fn withdraw(&self) -> bool {
        let mut waiting = self.queue.lock();
        let before = waiting.len();
        waiting.retain(|(call, _)| call.ticket != self.ticket);
        waiting.len() < before
    }
}

impl<T: Row, A: Send + 'static, E: QueueError> Drop for Place<'_, T, A, E> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { rows: 8, bytes: 100, in_flight: 2 };

    #[derive(Debug)]
    struct Named(&'static str, usize);

    #[derive(Debug, PartialEq)]
    enum Failed {
        NoTurn,
        Lost,
    }

    impl QueueError for Failed {
        fn no_turn(_: Duration) -> Self {
            Self::NoTurn
        }

        fn lost() -> Self {
            Self::Lost
        }
    }

    impl Row for Named {
        fn key(&self) -> &str {
            self.0
        }

        fn bytes(&self) -> usize {
            self.1
        }
    }

    fn queued(
        queue: &Queue<Named, usize, Failed>,
        rows: &[(&'static str, usize)],
    ) -> Vec<oneshot::Receiver<Result<usize, Failed>>> {
        let mut answers = Vec::new();
        for &(key, bytes) in rows {
            let (sender, answer) = oneshot::channel();
            std::mem::forget(queue.push(Named(key, bytes), sender));
            answers.push(answer);
        }
        answers
    }

    fn keys(batch: &[Waiting<Named, usize, Failed>]) -> Vec<&'static str> {
        batch.iter().map(|waiting| waiting.row.0).collect()
    }

    #[test]
    fn a_batch_takes_a_key_once_and_is_sorted_by_key() {
        let queue = Queue::new(LIMITS);
        let _answers = queued(&queue, &[("b", 1), ("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(keys(&queue.take()), ["a", "b", "c"]);
        assert_eq!(keys(&queue.take()), ["b"], "the second b waited for the next batch");
        assert!(queue.take().is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_row_and_byte_limits_but_always_takes_one() {
        let queue = Queue::new(LIMITS);
        let rows: Vec<(&'static str, usize)> =
            (0..LIMITS.rows + 1).map(|n| (&*Box::leak(format!("{n:03}").into_boxed_str()), 1)).collect();
        let _answers = queued(&queue, &rows);
        assert_eq!(queue.take().len(), LIMITS.rows);
        assert_eq!(queue.take().len(), 1);

        let _answers = queued(&queue, &[("huge", LIMITS.bytes * 2), ("small", 1)]);
        assert_eq!(keys(&queue.take()), ["huge"]);
        let _answers = queued(&queue, &[("half", LIMITS.bytes / 2), ("more", LIMITS.bytes / 2 + 1)]);
        assert_eq!(keys(&queue.take()), ["half", "small"], "the bytes limit leaves `more` for later");
        assert_eq!(keys(&queue.take()), ["more"]);
    }

    #[tokio::test]
    async fn queued_calls_get_their_own_answers_from_one_batch() {
        let queue = Arc::new(Queue::new(LIMITS));
        let batches = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&batches);
        let run = move |(): (), batch: Vec<Waiting<Named, usize, Failed>>| {
            let batches = Arc::clone(&counter);
            async move {
                batches.fetch_add(1, Ordering::SeqCst);
                for waiting in batch {
                    let bytes = waiting.row.1;
                    waiting.answer(Ok(bytes));
                }
            }
        };
        // The first turn waits until every call is queued.
        let gate = Arc::new(tokio::sync::Notify::new());
        let calls: Vec<_> = (1..=5)
            .map(|n| {
                let (queue, gate, run) = (Arc::clone(&queue), Arc::clone(&gate), run.clone());
                let key = ["a", "b", "c", "d", "e"][n - 1];
                tokio::spawn(async move {
                    let connect = |_| {
                        let gate = Arc::clone(&gate);
                        async move {
                            gate.notified().await;
                            Ok(())
                        }
                    };
                    queue.submit(Named(key, n), Duration::from_secs(5), connect, run).await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        gate.notify_one();
        for (n, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), n + 1);
        }
        assert_eq!(batches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_call_without_a_turn_gets_why_and_leaves_the_queue() {
        let queue: Queue<Named, usize, Failed> = Queue::new(LIMITS);
        let refused = || async { Err::<(), _>(Failed::NoTurn) };
        let run = |(): (), _batch: Vec<Waiting<Named, usize, Failed>>| async {};
        let answer = queue.submit(Named("a", 1), Duration::from_millis(1), |_| refused(), run).await;
        assert_eq!(answer, Err(Failed::NoTurn));
        assert!(queue.lock().is_empty());
    }

    #[tokio::test]
    async fn a_batch_that_ends_without_answering_is_an_error_not_a_hang() {
        let queue: Queue<Named, usize, Failed> = Queue::new(LIMITS);
        let run = |(): (), batch: Vec<Waiting<Named, usize, Failed>>| async move { drop(batch) };
        let answer = queue.submit(Named("a", 1), Duration::from_secs(1), |_| async { Ok(()) }, run).await;
        assert_eq!(answer, Err(Failed::Lost));
    }
}
