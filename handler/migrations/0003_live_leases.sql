-- A claim's fence: a random number drawn afresh for every claim. A finish
-- lands only under the fence of the claim that ran it. The attempt count
-- cannot fence: a claim commits asynchronously, so a crash can lose one, and
-- the next claim would then reuse its number.
alter table task_executions add column claim_fence bigint;
-- When the instance running the execution last said it is alive. A RUNNING
-- row whose renewals stopped (its instance died) may be taken over after a
-- short grace rather than the route's whole ack deadline.
alter table task_executions add column renewed_at timestamptz;
