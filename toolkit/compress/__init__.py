"""``make compress``: the most accurate student of a run's teacher under a latency budget, timed on the user's device.

``candidates`` (generate, profile, export), ``select`` (timings, budget, proxy and final training), ``report``
(report.md, plots), ``run`` (the resumable stages), ``cli`` (``python -m toolkit.compress``). The torch-free device
timer is ``deploy.time_candidates``. See docs/compress.md.
"""
