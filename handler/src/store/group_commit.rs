//! Group commit: concurrent claims (or finishes) wait in one queue, and the
//! first caller to get a turn (one of a few statements in flight, then a
//! connection) runs every call queued by then as one statement: under load,
//! one round trip and one commit carry many rows; alone, a call is a batch of
//! one. What the rows mean is for `postgres` to say; this module only queues,
//! takes and answers.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::Span;

use super::StoreError;

/// The most rows one statement carries.
const MAX_ROWS: usize = 64;

/// Statements of one queue in flight at once. Few, so that calls queue up
/// behind them and the next statement carries many rows: the database spends
/// its CPU on rows rather than on statements and commits. Two rather than one,
/// so that a statement stuck behind a row lock does not stop every claim.
const MAX_STATEMENTS: usize = 2;

/// The most bytes of arguments and results one statement carries; a batch
/// always takes at least one call, however large.
const MAX_BYTES: usize = 1 << 20;

/// What a queued call asks the database to write.
pub(crate) trait Row: Send + 'static {
    /// Two rows with one key never share a statement: one statement cannot
    /// touch a table row twice.
    fn key(&self) -> &str;

    /// The size of what the row carries, to bound a statement.
    fn bytes(&self) -> usize;
}

/// A call taken into a batch, and where its answer goes.
#[derive(Debug)]
pub(crate) struct Waiting<T, A> {
    ticket: u64,
    pub(crate) row: T,
    answer: oneshot::Sender<Result<A, StoreError>>,
}

impl<T, A> Waiting<T, A> {
    /// Wakes the caller with its result; one that has gone away is not told.
    pub(crate) fn answer(self, result: Result<A, StoreError>) {
        let _ = self.answer.send(result);
    }
}

/// The calls waiting for a batch to take them.
#[derive(Debug)]
pub(crate) struct Queue<T, A> {
    // A std Mutex: it is held only to push, take or remove, never across an await.
    waiting: Mutex<Vec<(Waiting<T, A>, Span)>>,
    tickets: AtomicU64,
    statements: Arc<Semaphore>,
}

impl<T, A> Default for Queue<T, A> {
    fn default() -> Self {
        let statements = Arc::new(Semaphore::new(MAX_STATEMENTS));
        Self { waiting: Mutex::new(Vec::new()), tickets: AtomicU64::new(0), statements }
    }
}

impl<T: Row, A: Send + 'static> Queue<T, A> {
    /// Queues `row` and waits for its answer. Meanwhile the caller waits for
    /// a turn: a statement's place and then a connection (`connect`), both
    /// within `wait`. If the turn comes before the answer, the caller takes
    /// the queue and runs it as a batch (see [`Queue::run`]). A caller whose
    /// turn does not come in time gets the reason, unless a batch took its
    /// row meanwhile.
    pub(crate) async fn submit<C, Connecting, Running>(
        &self,
        row: T,
        wait: Duration,
        connect: impl Fn(Instant) -> Connecting,
        run: impl Fn(C, Vec<Waiting<T, A>>) -> Running,
    ) -> Result<A, StoreError>
    where
        Connecting: Future<Output = Result<C, StoreError>>,
        Running: Future<Output = ()> + Send + 'static,
    {
        let (sender, mut answer) = oneshot::channel();
        let queued = self.push(row, sender);
        let deadline = Instant::now() + wait;
        // More than one turn only for a row whose key was in the batch taken.
        while queued.is_waiting() {
            let turn = tokio::select! {
                biased;
                answered = &mut answer => return answered.unwrap_or_else(|_| Err(lost())),
                turn = self.turn(deadline, wait, &connect) => turn,
            };
            match turn {
                Ok((statement, connection)) => self.run(statement, connection, &run),
                Err(error) if queued.withdraw() => return Err(error),
                Err(_) => {}
            }
        }
        answer.await.unwrap_or_else(|_| Err(lost()))
    }

    /// A place among the statements in flight, then a connection, by `deadline`.
    async fn turn<C, Connecting>(
        &self,
        deadline: Instant,
        wait: Duration,
        connect: impl Fn(Instant) -> Connecting,
    ) -> Result<(OwnedSemaphorePermit, C), StoreError>
    where
        Connecting: Future<Output = Result<C, StoreError>>,
    {
        let place = tokio::time::timeout_at(deadline.into(), Arc::clone(&self.statements).acquire_owned());
        // The semaphore is never closed.
        let Ok(Ok(statement)) = place.await else { return Err(StoreError::PoolTimeout(wait)) };
        Ok((statement, connect(deadline).await?))
    }

    /// Takes the queue and runs it on a task of its own, which keeps the
    /// statement's place until it ends: a caller that goes away strands no one.
    fn run<C, Running>(
        &self,
        statement: OwnedSemaphorePermit,
        connection: C,
        run: impl Fn(C, Vec<Waiting<T, A>>) -> Running,
    ) where
        Running: Future<Output = ()> + Send + 'static,
    {
        let batch = self.take();
        if batch.is_empty() {
            return;
        }
        let running = run(connection, batch);
        tokio::spawn(async move {
            running.await;
            drop(statement);
        });
    }

    fn push(&self, row: T, answer: oneshot::Sender<Result<A, StoreError>>) -> Queued<'_, T, A> {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.lock().push((Waiting { ticket, row, answer }, Span::current()));
        Queued { queue: self, ticket }
    }

    /// Everything queued that fits one statement, sorted by key so that
    /// concurrent statements lock rows in one order and never deadlock.
    fn take(&self) -> Vec<Waiting<T, A>> {
        let (mut batch, mut bytes, mut spans) = (Vec::new(), 0, Vec::new());
        let mut waiting = self.lock();
        let mut left = Vec::new();
        for (call, span) in waiting.drain(..) {
            let fits = batch.is_empty() || (batch.len() < MAX_ROWS && bytes + call.row.bytes() <= MAX_BYTES);
            if fits && !batch.iter().any(|taken: &Waiting<T, A>| taken.row.key() == call.row.key()) {
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
                span.record("db.operation.batch.size", batch.len());
            }
        }
        batch.sort_unstable_by(|a, b| a.row.key().cmp(b.row.key()));
        batch
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Waiting<T, A>, Span)>> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A caller's place in the queue; dropped, the row leaves the queue with it.
struct Queued<'a, T: Row, A: Send + 'static> {
    queue: &'a Queue<T, A>,
    ticket: u64,
}

impl<T: Row, A: Send + 'static> Queued<'_, T, A> {
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

impl<T: Row, A: Send + 'static> Drop for Queued<'_, T, A> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// The batch that took a call ended without answering it: its task panicked.
fn lost() -> StoreError {
    StoreError::database("the batch that held this call ended without an answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Named(&'static str, usize);

    impl Row for Named {
        fn key(&self) -> &str {
            self.0
        }

        fn bytes(&self) -> usize {
            self.1
        }
    }

    fn queued(
        queue: &Queue<Named, usize>,
        rows: &[(&'static str, usize)],
    ) -> Vec<oneshot::Receiver<Result<usize, StoreError>>> {
        let mut answers = Vec::new();
        for &(key, bytes) in rows {
            let (sender, answer) = oneshot::channel();
            std::mem::forget(queue.push(Named(key, bytes), sender));
            answers.push(answer);
        }
        answers
    }

    fn keys(batch: &[Waiting<Named, usize>]) -> Vec<&'static str> {
        batch.iter().map(|waiting| waiting.row.0).collect()
    }

    #[test]
    fn a_batch_takes_a_key_once_and_is_sorted_by_key() {
        let queue = Queue::default();
        let _answers = queued(&queue, &[("b", 1), ("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(keys(&queue.take()), ["a", "b", "c"]);
        assert_eq!(keys(&queue.take()), ["b"], "the second b waited for the next batch");
        assert!(queue.take().is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_row_and_byte_limits_but_always_takes_one() {
        let queue = Queue::default();
        let rows: Vec<(&'static str, usize)> =
            (0..MAX_ROWS + 1).map(|n| (&*Box::leak(format!("{n:03}").into_boxed_str()), 1)).collect();
        let _answers = queued(&queue, &rows);
        assert_eq!(queue.take().len(), MAX_ROWS);
        assert_eq!(queue.take().len(), 1);

        let _answers = queued(&queue, &[("huge", MAX_BYTES * 2), ("small", 1)]);
        assert_eq!(keys(&queue.take()), ["huge"]);
        let _answers = queued(&queue, &[("half", MAX_BYTES / 2), ("more", MAX_BYTES / 2 + 1)]);
        assert_eq!(keys(&queue.take()), ["half", "small"], "the bytes limit leaves `more` for later");
        assert_eq!(keys(&queue.take()), ["more"]);
    }

    #[tokio::test]
    async fn queued_calls_get_their_own_answers_from_one_batch() {
        let queue = Arc::new(Queue::default());
        let batches = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&batches);
        let run = move |(): (), batch: Vec<Waiting<Named, usize>>| {
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
        let queue: Queue<Named, usize> = Queue::default();
        let refused = || async { Err::<(), _>(StoreError::PoolTimeout(Duration::from_millis(1))) };
        let run = |(): (), _batch: Vec<Waiting<Named, usize>>| async {};
        let answer = queue.submit(Named("a", 1), Duration::from_millis(1), |_| refused(), run).await;
        assert!(matches!(answer, Err(StoreError::PoolTimeout(_))), "{answer:?}");
        assert!(queue.lock().is_empty());
    }

    #[tokio::test]
    async fn a_batch_that_ends_without_answering_is_an_error_not_a_hang() {
        let queue: Queue<Named, usize> = Queue::default();
        let run = |(): (), batch: Vec<Waiting<Named, usize>>| async move { drop(batch) };
        let answer = queue.submit(Named("a", 1), Duration::from_secs(1), |_| async { Ok(()) }, run).await;
        assert!(matches!(answer, Err(StoreError::Database { .. })), "{answer:?}");
    }
}
