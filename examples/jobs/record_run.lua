--- Job: record this run in a small history table, and count the runs.
-- The table is made here when missing, so the job needs no migrations.
return function(session)
  session:execute_script([[
    create table if not exists caracal_job_runs(
      id bigserial primary key,
      job text not null,
      at timestamptz not null default now())]])
  session:execute("insert into caracal_job_runs(job) values ($1)", "record_run")
  local n = session:scalar("select count(*) from caracal_job_runs")
  return string.format("%d run%s recorded", n, n == 1 and "" or "s")
end
