-- Which Airflow version last migrated the Airflow metadata database, so that the project's
-- commands skip `airflow db migrate` (several seconds) when it is already current.
create table if not exists ops.airflow_metadata (
    database_name   text primary key,
    airflow_version text        not null,
    migrated_at     timestamptz not null
);
