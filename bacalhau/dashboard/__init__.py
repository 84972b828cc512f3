"""The network's live dashboard: job lifecycle events gossiped by every requester, aggregated by every node.

    events.py    the gossip messages (a requester's hello, a job's snapshot) and the checks a peer's must pass
    store.py     the aggregation in SQLite ($BACALHAU_DIR/dashboard.db): counts bucketed at write time
    service.py   the node's side: publish its requester's jobs, listen, sync from peers, the live node list
"""
