"""
The ockamtw benchmark suite: our portal and relay paths side by side with
socat, haproxy, ``ssh -L``/``ssh -R`` and Twisted's portforward, in one run.

    python -m benchmarks            # full run, under 10 minutes
    python -m benchmarks --quick    # CI smoke mode, under a minute

See ``docs/performance.md``.
"""
