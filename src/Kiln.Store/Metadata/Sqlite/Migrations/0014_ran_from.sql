-- When the build began to run on its agent (Unix seconds), as the agent reported it; started is when it was asked
-- for (it may wait in line, behind its account's max-jobs or a busy farm). NULL for builds recorded before, and
-- for builds that never ran.
ALTER TABLE builds ADD COLUMN ran_from INTEGER;
