--- Job: what the database is, and that it answers.
-- A job file returns a function(session) run in its own transaction by
-- examples/job_runner.c; what it returns is the job's report line.
return function(session)
  local row = session:first(
    "select current_database() as db, current_setting('server_version') as version, " ..
    "pg_is_in_recovery() as replica")
  return string.format("%s on PostgreSQL %s (%s)", row.db, row.version,
                       row.replica and "replica" or "primary")
end
