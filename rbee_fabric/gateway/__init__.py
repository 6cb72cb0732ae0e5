"""`rbee serve`: one OpenAI-compatible endpoint in front of every node.

    app        the HTTP API (OpenAI shapes, the bearer key, /metrics)
    server     the key, the socket, the log lines, signals: what `rbee serve` runs
    translate  OpenAI requests and answers <-> rbee's wire messages (pure)
    routing    which node serves a request (pure)
    dispatch   getting a worker ready, streaming from it, cancelling
    pool       the nodes: one transport each, health, cached workers and catalog
    metrics    Prometheus counters, histograms and gauges
"""
