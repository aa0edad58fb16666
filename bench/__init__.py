"""The benchmarks of django_notebooks, as a package of modules by role.

The command-line entry points are ``bench/run.py`` (the bridge against bare
marimo), ``bench/workers.py`` (several worker processes) and
``bench/profile_bridge.py`` (py-spy); see bench/README.md. They share:

- ``servers``: the server processes (bare marimo, the bridge), started on
  free 127.0.0.1 ports and stopped by pid by whoever started them;
- ``client``: driving a notebook as marimo's frontend does, and the logins;
- ``measure`` and ``browser``: run.py's measurements (round trips, session
  opens, plain requests, bursts, churn; page loads in headless Chromium);
- ``phases``: run.py's run, step by step (each measures and makes its rows);
- ``report`` and ``targets``: statistics, the ratio table, the run's
  description and the check of the project's performance targets;
- ``workers_measure`` and ``workers_report``: workers.py's measurements
  (forwarded vs local latency, throughput) and its tables and JSON.
"""
