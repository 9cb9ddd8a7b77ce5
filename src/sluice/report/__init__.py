"""What the command line, the dashboard and the metrics exporter share: views of the data.

``units`` (rates and durations, parsed and printed), ``limits`` (limits as JSON
and text), ``runs`` (flow runs and task runs as JSON), ``sampler`` (periodic
snapshots of every limit, kept for charts and rates). No click, no web
framework: each front end imports these and adds its own surface.
"""
