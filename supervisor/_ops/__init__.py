"""The operator surface: what ``python -m supervisor`` shows an operator. Private.

Layered on top of the core and the MCP adapter; the core never imports this package.

* `_auth`: who may reach ``serve``: bearer tokens from a file (``--auth-token-file``) or a
  verifier (``--auth module:attr``), and the refusal of a public bind without authentication.
* `_feed`: JSON-ready frames (a snapshot of the supervisor, one lifecycle event) and the
  event-driven loop that produces them. Session ids leave the process truncated to 8 characters.
* `_logging`: stdlib logging set-up (text or JSON lines) and a subscriber that logs lifecycle
  events with structured fields.
* `_metrics`: Prometheus collectors (prometheus-client) fed by `Supervisor.statistics` at scrape
  time and by lifecycle events, plus an ASGI middleware timing MCP requests.
* `_admin`: the opt-in admin HTTP endpoint (``/metrics``, ``/sessions``, ``/events``) on its own
  bind address, loopback by default, bearer token required elsewhere.
* `_top`: the live view (rich), fed by the admin endpoint's event stream or in process.
"""
