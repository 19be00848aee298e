-- A failure retrying cannot fix (a permanent task error, arguments that do not
-- fit, a result that cannot be stored) is final: a redelivery of the same
-- task_id is answered without running the task again.
alter table task_executions add column permanent boolean not null default false;
