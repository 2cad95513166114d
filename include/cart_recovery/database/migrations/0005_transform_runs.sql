-- One row per successful cart_transform run: the time it planned for and how it built.
-- The next run reads it to decide between an incremental build and a full refresh.
create table if not exists ops.transform_runs (
    run_id          text        primary key,
    as_of           timestamptz not null,
    full_refresh    boolean     not null,
    reason          text        not null,
    plan_summary    jsonb,
    finished_at     timestamptz not null
);
create index if not exists transform_runs_finished_idx on ops.transform_runs (finished_at);
