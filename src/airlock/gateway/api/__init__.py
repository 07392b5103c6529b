"""The GitHub API as sandboxes reach it: TLS terminated by the egress proxy for the API's
names (tls_stream.py), each request decided by :func:`airlock.core.api_policy.decide_api`
and relayed with the upstream credential (relay.py), upstream calls in upstream.py."""
