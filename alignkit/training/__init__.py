"""Running a job: the shared runner, the offline and online loops, checkpoints, resume, engines."""
