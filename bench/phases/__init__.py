"""The phases of Gophermart's benchmark, one module each (bench/run.py runs them in order)."""
