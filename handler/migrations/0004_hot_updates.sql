-- Only what never changes once a row exists is indexed, so that a claim of a
-- READY row, every renewal and every finish is a HOT update: no index entry
-- is written, and the new row version goes on the row's own page, for which
-- the fillfactor leaves room. Four index entries per claim and four more per
-- finish become three per execution and none after. The status is not
-- indexed: it changes on every claim and finish. The queries to come read by
-- task and age, and check the status on the rows they find.
drop index task_executions_name_status;
drop index task_executions_status_enqueued;
drop index task_executions_group_key;
-- A task's executions by age (a task's results, newest first).
create index task_executions_name_created on task_executions (task_name, created_at);
-- Executions by age (retention).
create index task_executions_created on task_executions (created_at);
-- Nothing writes group_key yet: the index holds only the rows that have one.
create index task_executions_group_key on task_executions (group_key) where group_key is not null;
alter table task_executions set (fillfactor = 70);
