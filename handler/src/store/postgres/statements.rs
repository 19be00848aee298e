//! Every statement the store sends, prepared once per connection, and what
//! their rows mean: the SQL of the batched claim and finish, the renewal of
//! live leases, the abandon, the skip, the enqueue and the lookup of one
//! execution.
//!
//! The batched statements wait at most a second for a row lock
//! (`lock_timeout`): a row locked elsewhere must not hold up the batch around
//! it for long. Their plan is made while the table may still be nearly empty
//! and then kept: nothing here may join the batch with `task_executions` (the
//! planner would hash a scan of the whole table). Each row is found through
//! the primary key instead: by the upsert's conflict, or by a lookup per row
//! that `offset 0` keeps apart.
//!
//! Their rows are read from the arrays by subscript, not with `unnest`: the
//! planner counts the elements of `unnest`'s arrays when it plans for the
//! values given, so such a plan always looked cheaper than the prepared one,
//! and every batch was planned again (0.1 ms, as long as a finish takes to
//! run). Nothing counts `generate_subscripts`' rows, so from the sixth
//! statement on a connection the prepared plan is kept.

use serde_json::Value;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Row, Statement};

use crate::store::{Execution, Status, StoreError};

/// Claims a batch of executions (see `batches`): each row as one claim would,
/// answered by its position `n`. Each claim draws its fence (`$9`); a row
/// RUNNING under the same fence is this claim's own, sent again after a lost
/// connection, and is taken again. A RUNNING row is taken over once its
/// renewals have stopped for the lease (see `leases`). The commit is
/// asynchronous: a claim lost in a crash only means a redelivery Pub/Sub makes
/// anyway, since nothing is acked before a finish, and a finish's synchronous
/// commit makes the WAL before it, this claim included, durable too.
pub(super) const CLAIMS: &str = r"
with input as (
    select ($1::text[])[n] as task_id, ($2::text[])[n] as task_name, ($3::jsonb[])[n] as args,
           ($4::jsonb[])[n] as kwargs, ($5::text[])[n] as message_id, ($6::timestamptz[])[n] as enqueued_at,
           ($7::float8[])[n] as lease, ($8::int4[])[n] as max_attempts, ($9::int8[])[n] as fence, n::int8 as n
    from generate_subscripts($1::text[], 1) as n
),
claimed as (
    insert into task_executions as t
        (task_id, task_name, status, args, kwargs, attempts, message_id, enqueued_at, started_at, claim_fence,
         renewed_at)
    select task_id, task_name, 'RUNNING', args, kwargs, 1, message_id, enqueued_at, now(), fence, now()
    from input, (select set_config('synchronous_commit', 'off', true), set_config('lock_timeout', '1s', true)) as s
    on conflict (task_id) do update
    set status = 'RUNNING', attempts = t.attempts + 1, message_id = excluded.message_id, claim_fence = excluded.claim_fence,
        started_at = now(), renewed_at = now(), finished_at = null, updated_at = now()
    where exists (
        select from input as i
        where i.task_id = excluded.task_id
          and ((t.status = 'RUNNING' and t.claim_fence = i.fence)
               or ((i.max_attempts is null or t.attempts < i.max_attempts)
                   and ((t.status in ('READY', 'FAILED') and not t.permanent)
                        or (t.status = 'RUNNING'
                            and coalesce(t.renewed_at, t.started_at) <= now() - make_interval(secs => i.lease))))))
    returning t.task_id, t.attempts
)
select i.n, c.task_id is not null as claimed, coalesce(c.attempts, t.attempts) as attempts, t.status,
       i.max_attempts is not null and t.attempts >= i.max_attempts as exhausted,
       coalesce(t.renewed_at, t.started_at) <= now() - make_interval(secs => i.lease) as lease_over, t.permanent,
       t.claim_fence
from input as i
left join claimed as c on c.task_id = i.task_id
left join lateral (
    select status, attempts, started_at, renewed_at, permanent, claim_fence
    from task_executions
    where task_id = i.task_id and c.task_id is null
    offset 0
) as t on true";

/// Finishes a batch of attempts; returns the task ids it recorded. A row
/// takes a finish only under the fence of its claim, so a stale run never
/// overwrites a newer one; the same finish sent twice (after a lost
/// connection) is recorded twice, with the same values. The commit is
/// synchronous: an ack follows it. An upsert rather than an update joined with
/// the batch, so the conflict finds each row through the primary key; rows no
/// claim made are left out, so it inserts nothing (short of a row deleted
/// between that check and the conflict: it would come back).
pub(super) const FINISHES: &str = r"
insert into task_executions as t
    (task_id, task_name, status, attempts, claim_fence, return_value, error_message, error_traceback, permanent,
     finished_at)
select ($1::text[])[i], '', ($3::text[])[i], ($2::int4[])[i], ($8::int8[])[i], ($4::jsonb[])[i], ($5::text[])[i],
       ($6::text[])[i], ($7::bool[])[i], now()
from generate_subscripts($1::text[], 1) as i, (select set_config('lock_timeout', '1s', true)) as s
where (select true from task_executions where task_id = ($1::text[])[i])
on conflict (task_id) do update
set status = excluded.status, return_value = excluded.return_value, error_message = excluded.error_message,
    error_traceback = excluded.error_traceback, permanent = excluded.permanent, finished_at = now(), updated_at = now()
where t.claim_fence = excluded.claim_fence
returning t.task_id";

/// Renews the leases of the executions this instance runs (see `leases`):
/// one statement for all of them, each found through the primary key. The
/// commit is asynchronous: a renewal lost in a crash is one more reason to
/// take the execution over, which a crash gives anyway.
const RENEW: &str = r"
update task_executions
set renewed_at = now()
from (select set_config('synchronous_commit', 'off', true), set_config('lock_timeout', '1s', true)) as s
where task_id = any($1::text[]) and claim_fence = any($2::int8[]) and status = 'RUNNING'";

/// Records a last attempt that died while RUNNING, found by a claim.
const ABANDON: &str = r"
update task_executions
set status = 'FAILED', error_message = $3, finished_at = now(), updated_at = now()
where task_id = $1 and claim_fence is not distinct from $2 and status = 'RUNNING'";

/// Records a delivery its kill switch turned away, unless the execution
/// succeeded, failed for good or is running.
const SKIP: &str = r"
insert into task_executions as t
    (task_id, task_name, status, args, kwargs, message_id, enqueued_at, error_message, finished_at)
values ($1, $2, 'FAILED', $3, $4, $5, $6, $7, now())
on conflict (task_id) do update
set status = 'FAILED', error_message = excluded.error_message, error_traceback = null,
    finished_at = now(), updated_at = now()
where t.status in ('READY', 'FAILED') and not t.permanent";

/// Records an enqueued call READY, unless its task id is known; an earlier
/// enqueue that was never published (FAILED with no attempt) is made READY
/// again. Returns the status found when nothing changed.
const ENQUEUE: &str = r"
with ready as (
    insert into task_executions as t (task_id, task_name, status, args, kwargs, enqueued_at)
    values ($1, $2, 'READY', $3, $4, $5)
    on conflict (task_id) do update
    set status = 'READY', task_name = excluded.task_name, args = excluded.args, kwargs = excluded.kwargs,
        enqueued_at = excluded.enqueued_at, error_message = null, finished_at = null, updated_at = now()
    where t.status = 'FAILED' and t.attempts = 0
    returning t.task_id
)
select exists (select from ready) as ready, (select status from task_executions where task_id = $1) as status";

/// Records that a READY call could not be published, unless a delivery claimed it meanwhile.
const NOT_PUBLISHED: &str = r"
update task_executions
set status = 'FAILED', error_message = $2, finished_at = now(), updated_at = now()
where task_id = $1 and status = 'READY' and attempts = 0";

const GET: &str = r"
select task_id, task_name, status, args, kwargs, return_value, error_message, error_traceback,
       attempts, permanent, message_id, enqueued_at, started_at, finished_at
from task_executions
where task_id = $1";

/// The statements, prepared on one connection.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) claims: Statement,
    pub(super) finishes: Statement,
    pub(super) abandon: Statement,
    pub(super) renew: Statement,
    pub(super) skip: Statement,
    pub(super) enqueue: Statement,
    pub(super) not_published: Statement,
    pub(super) get: Statement,
}

impl Prepared {
    /// Prepares every statement; issued together, they share one round trip.
    pub(super) async fn on(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let (claims, finishes, abandon, renew, skip, enqueue, not_published, get) = tokio::try_join!(
            client.prepare(CLAIMS),
            client.prepare(FINISHES),
            client.prepare(ABANDON),
            client.prepare(RENEW),
            client.prepare(SKIP),
            client.prepare(ENQUEUE),
            client.prepare(NOT_PUBLISHED),
            client.prepare(GET),
        )?;
        Ok(Self { claims, finishes, abandon, renew, skip, enqueue, not_published, get })
    }
}

/// `attempts` is never negative: the column starts at 0 and only grows.
pub(super) fn attempts(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// PostgreSQL text cannot hold NUL: an error message that has one is still recorded.
pub(super) fn storable(text: &str) -> String {
    text.replace('\0', "\\0")
}

/// A row of [`GET`].
pub(super) fn execution(row: &Row) -> Result<Execution, StoreError> {
    let status: &str = row.get(2);
    let corrupt = |what: &str| StoreError::database(format!("task_executions row has {what}"));
    Ok(Execution {
        task_id: row.get(0),
        task_name: row.get(1),
        status: Status::parse(status).ok_or_else(|| corrupt(&format!("an unknown status {status:?}")))?,
        args: row.get::<_, Json<Value>>(3).0,
        kwargs: row.get::<_, Json<Value>>(4).0,
        return_value: row.get::<_, Option<Json<Value>>>(5).map(|json| json.0),
        error_message: row.get(6),
        error_traceback: row.get(7),
        attempts: u32::try_from(row.get::<_, i32>(8)).map_err(|_| corrupt("negative attempts"))?,
        permanent: row.get(9),
        message_id: row.get(10),
        enqueued_at: row.get(11),
        started_at: row.get(12),
        finished_at: row.get(13),
    })
}
