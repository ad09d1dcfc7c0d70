"""Stage 3, the supervisor: register, heartbeat, keep the libcache and run jobs."""
