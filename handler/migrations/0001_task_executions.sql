-- One row per execution id. status moves READY -> RUNNING -> SUCCESSFUL | FAILED,
-- and FAILED -> RUNNING again on a retry; attempts fences each finish.
create table task_executions (
    task_id         text primary key,
    task_name       text not null,
    status          text not null check (status in ('READY', 'RUNNING', 'SUCCESSFUL', 'FAILED')),
    args            jsonb not null default '[]',
    kwargs          jsonb not null default '{}',
    return_value    jsonb,
    error_message   text,
    error_traceback text,
    attempts        integer not null default 0,
    message_id      text,
    enqueued_at     timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    group_key       text,
    label           text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

create index task_executions_name_status on task_executions (task_name, status);
create index task_executions_status_enqueued on task_executions (status, enqueued_at);
create index task_executions_group_key on task_executions (group_key);
