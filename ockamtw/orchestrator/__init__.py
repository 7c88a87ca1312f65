"""
The self-hosted Orchestrator: projects (a project node and a project
authority each), spaces, members, enrollment codes and relay owners,
served over an HTTP+JSON API (L{ockamtw.orchestrator.api}) and stored in
SQLite or PostgreSQL (L{ockamtw.orchestrator.store}).
"""
