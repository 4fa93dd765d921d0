"""The benchmark behind ``benchmarks/run.py``, by concern.

- :mod:`~benchmarks.suite.profiles`: how big a run is and which rows it trains (``PROFILES``, seeds, doses).
- :mod:`~benchmarks.suite.datasets`: the data of a run, simulated or real, and one dose of it (``DoseData``).
- :mod:`~benchmarks.suite.scoring`: picks and denoised images against the truth, the same for every method.
- :mod:`~benchmarks.suite.cells`: the rows (``MethodSpec``) and how each computes one (structure, dose) cell.
- :mod:`~benchmarks.suite.render`: the markdown, JSON and HTML outputs, from the cells alone.

``benchmarks/run.py`` parses the command line, runs the cells in order, caches them and re-renders after each.
"""
