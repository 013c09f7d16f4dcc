"""mailflow's benchmark harness: `python3 -m harness` with bench/ on PYTHONPATH (bench/run).

common: constants and plans; procs: /proc helpers; generator: smtp-source; systems: what
is measured; runs: the measurements; report: the Markdown report and chart; __main__: the command line.
"""
