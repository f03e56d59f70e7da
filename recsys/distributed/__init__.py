"""Scale-out on Ray: the `[ray]` settings and the session every Ray job runs in."""
