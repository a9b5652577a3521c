--- A job that fails halfway (examples/job_runner.c's failure path): the
-- runner reports the error and exits 1, and nothing the job did stays:
-- its transaction is rolled back.
return function(session)
  session:execute("create temp table failing_job_scratch(x int)")
  session:execute("insert into failing_job_scratch values (1)")
  session:execute("select 1 / 0")
end
