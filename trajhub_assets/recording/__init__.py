"""Recording: every LLM call an agent makes, through the LiteLLM proxy, into the store.

- run_id: the (model, instance, attempt) id each request carries.
- proxy_process / resources: the real proxy (proxy/start_proxy.py) as a subprocess, and
  the Dagster resource that starts it on demand or points at an external one.
- raw_calls: a run's JSONL records into the `raw_calls` and `message_blobs` tables, and back.
- scripted_upstream: a scripted LLM server (real HTTP) for tests and demos.

The recorder itself is proxy/trajectory_logger.py; it runs inside the proxy process.
"""
